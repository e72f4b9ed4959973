"""The composition root runs several front ends on one event loop and one pool: DIMSE and a
second transport started beside it, serving at once, and stopped together (in reverse)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsguard.archive.app import FrontEndFactory, RunningArchive, start_archive
from pacsguard.archive.config import load_settings
from pacsguard.archive.runtime import Endpoint
from pacsguard.dicom import uids

from .conftest import free_port, make_data_dir, open_as_tester


class LineFrontEnd:
    """A second, tiny transport: each connection gets one line naming the event loop it is
    served on and the thread its archive call ran on (the runtime's pool)."""

    def __init__(self, running: RunningArchive, *, fail: bool = False) -> None:
        self._running = running
        self._fail = fail
        self._server: asyncio.Server | None = None
        self.stopped = False

    async def start(self) -> list[Endpoint]:
        if self._fail:
            raise OSError("this front end cannot bind")
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return [Endpoint(str(host), int(port), False, "line")]

    async def stop(self) -> None:
        self.stopped = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        index = self._running.index

        def archive_call() -> str:  # a real archive call: the instance count, off the loop
            sum(1 for _ in index.all_blob_keys())
            return threading.current_thread().name

        thread = await loop.run_in_executor(self._running.runtime.executor, archive_call)
        same_loop = loop is self._running.runtime.loop
        writer.write(f"{same_loop} {thread}\n".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return make_data_dir(tmp_path / "data")


def _start(data_dir: Path, *factories: FrontEndFactory) -> RunningArchive:
    settings = load_settings(
        data_dir / "pacsguard.toml",
        env={},
        overrides={"server.dimse_port": free_port(), "server.plaintext_port": free_port()},
    )
    return start_archive(settings, factories)


@pytest.fixture
def archive(data_dir: Path) -> Iterator[tuple[RunningArchive, list[LineFrontEnd]]]:
    made: list[LineFrontEnd] = []

    def factory(running: RunningArchive) -> LineFrontEnd:
        made.append(LineFrontEnd(running))
        return made[-1]

    running = _start(data_dir, factory)
    yield running, made
    running.stop()


def _line(endpoint: Endpoint) -> str:
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        return sock.makefile().readline().strip()


def test_dimse_and_a_second_front_end_share_the_loop_and_the_pool(
    archive: tuple[RunningArchive, list[LineFrontEnd]],
) -> None:
    running, _ = archive
    protocols = [e.protocol for e in running.endpoints]
    assert protocols == ["dicom", "dicom", "line"]  # DIMSE first (TLS, plaintext), then ours
    assert [type(f).__name__ for f in running.front_ends] == ["AsyncDimseFrontEnd", "LineFrontEnd"]
    line_endpoint = running.endpoints[-1]
    plain = next(e for e in running.endpoints if e.protocol == "dicom" and not e.tls)

    async def both() -> tuple[int, str]:
        assoc = await open_as_tester(plain.port, [uids.VERIFICATION])
        try:
            line = await asyncio.to_thread(_line, line_endpoint)
            context = next(c for c in assoc.accepted.contexts if c.accepted)
            status = await assoc.echo(context)
        finally:
            await assoc.release()
        return status, line

    status, line = asyncio.run(both())
    assert status == 0x0000
    same_loop, thread = line.split()
    assert same_loop == "True" and thread.startswith("archive")  # the runtime's pool
    assert str(line_endpoint).startswith("line://127.0.0.1:")


def test_stop_stops_every_front_end_and_the_loop(data_dir: Path) -> None:
    made: list[LineFrontEnd] = []
    running = _start(data_dir, lambda r: made.append(LineFrontEnd(r)) or made[-1])
    loop = running.runtime.loop
    endpoints = list(running.endpoints)
    running.stop()
    assert made[0].stopped and not loop.is_running()
    for endpoint in endpoints:
        with pytest.raises(OSError):
            socket.create_connection((endpoint.host, endpoint.port), timeout=2).close()


def test_a_front_end_that_cannot_start_stops_the_archive(data_dir: Path) -> None:
    with pytest.raises(OSError, match="cannot bind"):
        _start(data_dir, lambda r: LineFrontEnd(r, fail=True))
    again = _start(data_dir)  # the DIMSE ports and the index were let go
    again.stop()
