"""An archive started in-process on loopback, with peers registered as an administrator would."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pacsguard.archive.app import RunningArchive, start_archive
from pacsguard.archive.config import load_settings
from pacsguard.archive.security.bootstrap import initialize
from pacsguard.dicom.client import Association, Timeouts, request_association
from pacsguard.dicom.ul import propose

#: A peer trusted by its loopback address, may do everything: the tests' client.
TESTER = """
[[ae]]
ae_title = "TESTER"
auth = "address"
address = "127.0.0.1"
permissions = ["echo", "store", "find", "move", "get"]
"""


def make_data_dir(tmp: Path, extra_config: str = TESTER) -> Path:
    initialize(tmp)
    config = tmp / "pacsguard.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace("allow_address_auth = false", "allow_address_auth = true")
    config.write_text(text + extra_config, encoding="utf-8")
    return tmp


StartArchive = Callable[..., RunningArchive]


async def open_as_tester(
    port: int, sop_classes: Sequence[str], *, read_timeout: float = 10.0
) -> Association:
    """An association from TESTER (trusted by address) to the archive on 127.0.0.1:port."""
    answer, assoc = await request_association(
        "127.0.0.1",
        port,
        calling_ae="TESTER",
        called_ae="PACSGUARD",
        contexts=propose(sop_classes),
        timeouts=Timeouts(connect=2.0, read=read_timeout),
    )
    assert assoc is not None, answer
    return assoc


PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))


def start_serve(data_dir: Path, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`pacsguard serve` as a process, plaintext on loopback `port`, once it listens; `extra`
    arguments are passed on."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                PACSGUARD,
                "serve",
                "--data-dir",
                str(data_dir),
                "--no-self-check",
                "--port",
                str(free_port()),
                "--plaintext-port",
                str(port),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartArchive]:
    """start(**overrides) -> a running archive on ephemeral loopback ports (TLS + plaintext)."""
    running: list[RunningArchive] = []

    def _start(data_dir: Path | None = None, **overrides: object) -> RunningArchive:
        directory = data_dir or make_data_dir(tmp_path / f"data{len(running)}")
        settings = load_settings(
            directory / "pacsguard.toml",
            env={},
            overrides={
                "server.dimse_port": free_port(),
                "server.plaintext_port": free_port(),
                **overrides,
            },
        )
        archive = start_archive(settings)
        running.append(archive)
        return archive

    yield _start
    for archive in running:
        archive.stop()
