"""A running archive with DICOMweb on an ephemeral loopback port, and HTTPS clients for it.

Clients verify the archive's certificate against its own first-run CA (`tls/ca.crt`) and
authenticate with API tokens issued as `pacsguard token issue` does (`archive.tokens`).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pacsguard.archive import tokens
from pacsguard.archive.app import RunningArchive, start_archive
from pacsguard.archive.config import load_settings
from tests.integration.serve.conftest import TESTER, make_data_dir

#: Users with one role each.
USERS = """
[users.reader]
roles = ["viewer"]

[users.uploader]
roles = ["modality"]
"""


def web_endpoint(archive: RunningArchive) -> tuple[str, int]:
    """Where the archive's DICOMweb listens."""
    https = [e for e in archive.endpoints if e.protocol == "https"]
    assert len(https) == 1, archive.endpoints
    return https[0].host, https[0].port


@dataclass
class WebArchive:
    archive: RunningArchive
    data_dir: Path
    base_url: str
    ca_file: Path

    @property
    def dimse_port(self) -> int:
        return next(e.port for e in self.archive.endpoints if e.protocol == "dicom" and not e.tls)

    @property
    def web_endpoint(self) -> tuple[str, int]:
        return web_endpoint(self.archive)

    def token(self, username: str = "admin") -> str:
        return tokens.issue(self.data_dir / tokens.TOKENS_FILE, username, days=1)[1]

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, username: str | None = "admin", **kwargs: object) -> httpx.Client:
        headers = {} if username is None else {"Authorization": f"Bearer {self.token(username)}"}
        return httpx.Client(
            base_url=self.base_url,
            verify=self.tls(),
            headers=headers,
            timeout=30,
            **kwargs,  # type: ignore[arg-type]
        )

    def audit_lines(self) -> list[str]:
        path = self.archive.settings.audit.log_path
        return path.read_text(encoding="utf-8").splitlines()


def free_ports(count: int) -> list[int]:
    """`count` different free loopback ports (held open together while chosen, so that the
    kernel cannot hand out one twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_web(
    tmp_path: Path, *, tester: bool = False, extra_config: str = "", **overrides: object
) -> WebArchive:
    """An archive with DICOMweb. With `tester`, TESTER is registered by its loopback address
    for dcmtk tools; the gate then also takes any HTTP request from 127.0.0.1 without a token
    as TESTER (address authentication is per source, whatever the transport), so tests of
    refusals run without it. `extra_config` is appended to the TOML (more AEs)."""
    data_dir = make_data_dir(tmp_path / "data", (TESTER if tester else "") + USERS + extra_config)
    dimse, plain, web = free_ports(3)
    settings = load_settings(
        data_dir / "pacsguard.toml",
        env={},
        overrides={
            "server.dimse_port": dimse,
            "server.plaintext_port": plain,
            "dicomweb.enabled": True,
            "dicomweb.port": web,
            **overrides,
        },
    )
    archive = start_archive(settings)
    host, bound = web_endpoint(archive)
    return WebArchive(archive, data_dir, f"https://{host}:{bound}", data_dir / "tls" / "ca.crt")


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebArchive]:
    running = start_web(tmp_path)
    try:
        yield running
    finally:
        running.archive.stop()
