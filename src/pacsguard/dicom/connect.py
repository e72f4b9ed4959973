"""Opening and closing a connection to a DICOM peer: TCP (and TLS), bounded in time.

Nothing here speaks DICOM, so nothing here imports pydicom or pynetdicom: a scan whose targets
never answer (closed ports, filtered hosts) connects, fails and reports without loading them.
`pacsguard.dicom.client` re-exports these names and does the rest of the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Final

#: The largest PDU we accept from a peer, whatever it announces (a stream reader's buffer is
#: sized from it).
MAX_INCOMING_PDU: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-conversation timeouts in seconds."""

    connect: float = 3.0
    read: float = 5.0


class ConnectTimeout(TimeoutError):
    """The TCP connection itself was not established in time (nothing answered SYN)."""


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _address_family(host: str) -> socket.AddressFamily | None:
    """AF_INET or AF_INET6 for an IP literal (no zone id), None for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _expire(ready: asyncio.Future[None], message: str) -> None:
    if not ready.done():
        ready.set_exception(ConnectTimeout(message))


def _pending(sock: socket.socket) -> int:
    """0 when a non-blocking connect has completed, EINPROGRESS while it is under way."""
    try:
        sock.getpeername()
    except OSError:
        return errno.EINPROGRESS
    return 0


async def _connect_socket(
    family: socket.AddressFamily, host: str, port: int, timeout: float
) -> socket.socket:
    """A connected non-blocking TCP socket to an IP literal, or OSError / ConnectTimeout.

    What `loop.sock_connect` does, without name resolution and without a timeout context per
    call, and without a trip through the event loop when the answer is already there: a scan
    of a /20 where almost nothing listens is mostly this, so its overhead is the scan's.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error in (errno.EINPROGRESS, errno.EAGAIN):
            # Nearby hosts (loopback, the local network) have often answered already: a refusal
            # is then pending on the socket, or the handshake is done. Only otherwise wait.
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or _pending(sock)
        if error in (errno.EINPROGRESS, errno.EAGAIN):
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            fd = sock.fileno()
            loop.add_writer(fd, _resolve, ready)
            expiry = loop.call_later(
                timeout, _expire, ready, f"no TCP connection to {host}:{port} within {timeout}s"
            )
            try:
                await ready
            finally:
                expiry.cancel()
                loop.remove_writer(fd)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            # OSError(errno, ...) is the matching subclass (ConnectionRefusedError, ...).
            raise OSError(error, f"connect to {host}:{port}: {os.strerror(error)}")
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(
    host: str, port: int, *, timeouts: Timeouts, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect (and complete the TLS handshake) within `timeouts.connect`; TCP_NODELAY on.

    Raises ConnectTimeout when that takes too long, OSError when the connection fails.
    """
    family = _address_family(host) if tls is None else None
    if family is not None:
        sock = await _connect_socket(family, host, port, timeouts.connect)
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_INCOMING_PDU + 16)
        except BaseException:
            sock.close()
            raise
        set_nodelay(writer)
        return reader, writer
    try:
        async with asyncio.timeout(timeouts.connect):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, limit=MAX_INCOMING_PDU + 16
            )
    except TimeoutError:
        raise ConnectTimeout(
            f"no TCP connection to {host}:{port} within {timeouts.connect}s"
        ) from None
    set_nodelay(writer)
    return reader, writer


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close gracefully, waiting at most a second for the transport to finish."""
    with contextlib.suppress(Exception):
        writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


async def close_within_deadline(writer: asyncio.StreamWriter) -> None:
    """Close like `close_writer`, except in a task being cancelled (its deadline has passed):
    then drop the connection at once, without waiting for the peer or a TLS close_notify.

    A requestor that waited here would let a peer that never reads stretch a caller's hard
    time budget by another second per connection.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        with contextlib.suppress(Exception):
            writer.transport.abort()
        return
    await close_writer(writer)


async def close_after_reject(writer: asyncio.StreamWriter) -> None:
    """Close the requestor's side after an A-ASSOCIATE-RJ (PS3.8 9.2, action AE-4: the
    requestor closes the transport connection).

    Plain TCP has nothing left to say and nothing to wait for: the close is started and the
    caller goes on, without the loop turns that waiting for the transport to report itself
    closed costs (a scan trying the vendor-default called AE titles on a checking host does this
    once per title, in sequence). Inside TLS, the close_notify exchange is still waited for,
    within `close_within_deadline`'s bounds.
    """
    if writer.get_extra_info("sslcontext") is None:
        with contextlib.suppress(Exception):
            writer.close()
        return
    await close_within_deadline(writer)
