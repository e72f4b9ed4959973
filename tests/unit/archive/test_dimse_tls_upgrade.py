"""The DIMSE TLS listener's upgrade (`start_handshake`) on both loops the archive may run on:
a ClientHello sent with the connection, and data sent with the client's Finished, both reach
TLS (uvloop's `start_tls` alone loses the first: uvloop#707)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from pacsguard.archive.config import TlsSettings
from pacsguard.archive.dimse.aio import _LowLatencyProtocol, _QuickAckReader, start_handshake
from pacsguard.archive.security.bootstrap import initialize
from pacsguard.archive.security.tls import server_context

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    layout = initialize(tmp_path_factory.mktemp("pki") / "data").layout
    tls = TlsSettings(
        cert_file=layout.server_cert, key_file=layout.server_key, ca_file=layout.ca_cert
    )
    return server_context(tls), layout.ca_cert


def eager_client(port: int, ca: Path) -> bytes:
    """Handshake, then the request written with the client's Finished in one segment (as
    dcmtk's storescu does with TLS 1.3); returns the reply."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"0123456789")
        sock.sendall(outgoing.read())
        while True:
            try:
                return tls.read(100)
            except ssl.SSLWantReadError:
                received = sock.recv(65536)
                if not received:
                    return b""
                incoming.write(received)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_every_connection_is_upgraded_and_served(
    loop_name: str, contexts: tuple[ssl.SSLContext, Path]
) -> None:
    server_tls, ca = contexts

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await start_handshake(writer, server_tls, 5.0)
            request = await asyncio.wait_for(reader.readexactly(10), 5)
            writer.write(b"echo " + request)
            await writer.drain()
        finally:
            writer.close()

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _LowLatencyProtocol(_QuickAckReader(loop=loop), handle, loop=loop, tls=True),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            return [await asyncio.to_thread(eager_client, port, ca) for _ in range(12)]
        finally:
            server.close()

    loop = LOOPS[loop_name]()
    try:
        replies = loop.run_until_complete(main())
    finally:
        loop.close()
    assert replies == [b"echo 0123456789"] * 12
