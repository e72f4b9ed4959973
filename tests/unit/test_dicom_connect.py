"""`open_connection`'s own connect for IP literals: refused, connected, and a connect that gets
no answer (a listener whose accept queue is full drops the SYN) ending in ConnectTimeout within
the connect timeout; names still go through asyncio's resolver."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from pacsguard.dicom.connect import ConnectTimeout, Timeouts, open_connection

LOOPBACK = "127.0.0.1"


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(8)
        yield sock


def test_a_refused_connect_is_connection_refused(closed_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(open_connection(LOOPBACK, closed_port, timeouts=Timeouts(connect=5.0)))


@pytest.mark.parametrize("host", [LOOPBACK, "localhost"])
def test_a_listener_is_connected_with_nodelay(listening: socket.socket, host: str) -> None:
    port = listening.getsockname()[1]

    async def connect() -> int:
        _, writer = await open_connection(host, port, timeouts=Timeouts(connect=5.0))
        nodelay = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()
        await writer.wait_closed()
        return int(nodelay)

    assert asyncio.run(connect()) == 1


def test_a_connect_without_answer_ends_at_the_connect_timeout() -> None:
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(0)  # never accepted: the queue fills and further SYNs are dropped
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex((LOOPBACK, port))
                fillers.append(filler)
            time.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(ConnectTimeout):
                asyncio.run(open_connection(LOOPBACK, port, timeouts=Timeouts(connect=0.5)))
            assert 0.4 < time.monotonic() - started < 5.0
        finally:
            for filler in fillers:
                filler.close()
