"""Other services on DICOM ports, as internet surveys meet them: HTTP, SSH and HTTPS responders.

- http: an nginx-like server: a request line gets a small 404 page, anything else (such as an
  A-ASSOCIATE-RQ) a 400 Bad Request, as nginx answers a non-HTTP request;
- ssh: an OpenSSH-like banner on connect; a peer that does not answer with an SSH identification
  string gets "Invalid SSH identification string." and the connection closes;
- tls: the http responder behind TLS with a self-signed certificate made when the farm starts
  (the farm wraps it: `Profile.SERVICE_TLS.tls`).

Each reads a bounded amount, holds a connection at most `Limits.hostile_hold` seconds, and never
answers in DICOM, so a scanner must tell them apart from PACS by their bytes alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

from pacsguard.lab.session import HostState, Limits

#: What the HTTP responder reads of a request before it answers.
_MAX_REQUEST: Final = 16 * 1024
_READ_CHUNK: Final = 4096
_HTTP_METHODS: Final = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")

NOT_FOUND_PAGE: Final = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
    b"</html>\r\n"
)
BAD_REQUEST_PAGE: Final = (
    b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n"
    b"<center><h1>400 Bad Request</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
    b"</html>\r\n"
)
SSH_IDENTIFICATION: Final = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
SSH_INVALID: Final = b"Invalid SSH identification string.\r\n"


def http_response(request: bytes) -> bytes:
    """The answer of the HTTP responder to the first bytes a peer sent (possibly none)."""
    if request.startswith(_HTTP_METHODS):
        status, body = b"404 Not Found", NOT_FOUND_PAGE
    else:
        status, body = b"400 Bad Request", BAD_REQUEST_PAGE
    head = (
        b"HTTP/1.1 " + status + b"\r\nServer: nginx\r\nContent-Type: text/html\r\n"
        b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\nConnection: close\r\n\r\n"
    )
    return head + (b"" if request.startswith(b"HEAD ") else body)


async def _read_some(
    reader: asyncio.StreamReader, seconds: float, done: Callable[[bytes], bool]
) -> bytes:
    """Read until `done(received)`, the peer stops, `seconds` pass or the bound is reached."""
    received = b""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(seconds):
            while len(received) < _MAX_REQUEST and not done(received):
                chunk = await reader.read(_READ_CHUNK)
                if not chunk:
                    break
                received += chunk
    return received


def request_complete(received: bytes) -> bool:
    """A whole request head, or bytes that cannot start one (nginx answers those at once)."""
    if b"\r\n\r\n" in received:
        return True
    could_be_http = any(
        received.startswith(method) or method.startswith(received) for method in _HTTP_METHODS
    )
    return not could_be_http


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
    """Half-close, then drain the peer until it closes: a close with unread input would reset
    the connection and could destroy the answer before the peer reads it."""
    with contextlib.suppress(OSError, RuntimeError):
        await writer.drain()
        if not writer.can_write_eof():  # TLS: the close_notify on closing ends the answer
            return
        writer.write_eof()
    await _read_some(reader, hold, lambda _: False)


async def serve_http(
    state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
) -> None:
    """Answer the first request like nginx: a 404 for HTTP, a 400 at once for anything else
    (an A-ASSOCIATE-RQ), and a 400 when the peer stays silent for the association timeout."""
    del state
    request = await _read_some(reader, limits.association_timeout, request_complete)
    writer.write(http_response(request))
    await _finish(reader, writer, min(limits.hostile_hold, 5.0))


async def serve_ssh(
    state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
) -> None:
    """Send the identification string first, as SSH servers do, and reject a non-SSH peer."""
    del state
    writer.write(SSH_IDENTIFICATION)
    line = b""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(limits.association_timeout):
            line = await reader.read(_READ_CHUNK)  # whatever comes first decides
    if line and not line.startswith(b"SSH-"):
        writer.write(SSH_INVALID)
    await _finish(reader, writer, min(limits.hostile_hold, 5.0))
