"""A client that opens TCP and never finishes its TLS handshake is dropped within the
configured deadline (`[server] handshake_timeout_s`), on the HTTPS listener and on the DIMSE
TLS listener, while other clients are served meanwhile."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import WebArchive, start_web

HANDSHAKE_S = 1.0
#: Generous: the deadline plus scheduling on a busy 2-core machine; asyncio's default is 60 s.
BOUND_S = HANDSHAKE_S + 4.0


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[WebArchive]:
    web = start_web(tmp_path, **{"server.handshake_timeout_s": HANDSHAKE_S})
    try:
        yield web
    finally:
        web.archive.stop()


def _closed_after(sock: socket.socket, started: float) -> float:
    """Seconds from `started` until the server closes `sock` (which sends nothing)."""
    sock.settimeout(30)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_stalled_https_handshake_is_dropped_while_others_are_served(quick: WebArchive) -> None:
    host, port = quick.web_endpoint
    started = time.monotonic()
    stalled = [socket.create_connection((host, port)) for _ in range(3)]
    half = socket.create_connection((host, port))
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello, cut short
    try:
        with quick.client() as client:  # served while the others stall
            assert client.get("/studies").status_code == 200
        for sock in [*stalled, half]:
            assert _closed_after(sock, started) < BOUND_S
    finally:
        for sock in [*stalled, half]:
            sock.close()
    with quick.client() as client:
        assert client.get("/studies").status_code == 200


def test_a_stalled_dimse_tls_handshake_is_dropped_within_the_deadline(quick: WebArchive) -> None:
    endpoint = next(e for e in quick.archive.endpoints if e.protocol == "dicom" and e.tls)
    started = time.monotonic()
    with socket.create_connection((endpoint.host, endpoint.port)) as stalled:
        assert _closed_after(stalled, started) < BOUND_S
