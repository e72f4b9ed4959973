"""Hosts that break the DICOM upper layer on purpose, so the scanner's bounds get exercised.

- garbage: answers with an HTTP or SSH banner or random bytes instead of a PDU, then closes;
- huge PDU: announces a ~4 GB A-ASSOCIATE-AC, trickles a few bytes, then goes quiet;
- silent: accepts TCP, reads, never answers;
- close mid-PDU: sends the first half of a valid A-ASSOCIATE-AC, then closes.

Each holds a connection at most `Limits.hostile_hold` seconds and reads at most a bounded amount.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import Awaitable, Callable
from typing import Final

from pynetdicom.pdu import A_ASSOCIATE_RQ

from pacsguard.dicom import uids
from pacsguard.dicom.ul import ASSOCIATE_AC, MAX_ASSOCIATION_PDU, read_pdu
from pacsguard.errors import ProtocolError
from pacsguard.lab.acceptor import Accepted, encode_accept, negotiate
from pacsguard.lab.banners import serve_http, serve_ssh
from pacsguard.lab.profiles import Profile
from pacsguard.lab.session import HostState, Limits

_READ_CHUNK: Final = 64 * 1024
#: Bytes a hostile host reads before it stops listening (it still holds the socket).
_MAX_DISCARD: Final = 4 * 1024 * 1024
#: How long a garbage host waits for the A-ASSOCIATE-RQ before babbling anyway.
_GARBAGE_WAIT: Final = 2.0

HTTP_BANNER: Final = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)
SSH_BANNER: Final = b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n"
#: A-ASSOCIATE-AC header announcing 0xFFFFFFF0 bytes: a peer that believes it allocates 4 GB.
HUGE_AC_HEADER: Final = struct.pack(">BBI", ASSOCIATE_AC, 0, 0xFFFFFFF0)

HostileBehaviour = Callable[
    [HostState, asyncio.StreamReader, asyncio.StreamWriter, Limits], Awaitable[None]
]


async def _discard(reader: asyncio.StreamReader, seconds: float) -> None:
    """Read and drop what the peer sends, until it closes, `seconds` pass or the cap is hit."""
    received = 0
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(seconds):
            while received < _MAX_DISCARD:
                chunk = await reader.read(_READ_CHUNK)
                if not chunk:
                    return
                received += len(chunk)
            await asyncio.sleep(seconds)  # over the cap: stop reading, keep holding


def garbage_bytes(seed: int) -> tuple[bytes, bool]:
    """The garbage a host sends and whether it sends it before the request (like a banner).

    The first byte is never a PDU type (0x01-0x07), so a careful peer can tell at once.
    """
    rng = random.Random(f"pacsguard-lab-garbage:{seed}")
    variant = seed % 3
    if variant == 0:
        return HTTP_BANNER, False
    if variant == 1:
        return SSH_BANNER, True
    noise = bytearray(rng.randbytes(rng.randint(16, 512)))
    noise[0] = rng.randint(0x08, 0xFF)
    return bytes(noise), False


async def _garbage(
    state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
) -> None:
    data, on_connect = garbage_bytes(state.spec.seed)
    if not on_connect:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_GARBAGE_WAIT):
                await reader.read(_READ_CHUNK)
    writer.write(data)
    with contextlib.suppress(OSError):
        writer.write_eof()
    # Keep reading until the peer closes: closing with unread input would reset the connection
    # and could destroy the garbage before the peer reads it.
    await _discard(reader, min(limits.hostile_hold, 5.0))


async def _huge_pdu(
    state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limits.association_timeout):
            await reader.read(_READ_CHUNK)
    writer.write(HUGE_AC_HEADER)
    rng = random.Random(state.spec.seed)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.hostile_hold
    for _ in range(8):  # trickle a few bytes, then stop talking
        if loop.time() >= deadline or writer.is_closing():
            return
        writer.write(rng.randbytes(1))
        await _discard(reader, min(1.0, deadline - loop.time()))
        if reader.at_eof():
            return
    await _discard(reader, max(0.0, deadline - loop.time()))


async def _silent(
    state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
) -> None:
    await _discard(reader, limits.hostile_hold)


def half_accept(state: HostState, rq_bytes: bytes | None) -> bytes:
    """The first half of a valid A-ASSOCIATE-AC for the request (or a generic one)."""
    full: bytes | None = None
    if rq_bytes is not None:
        rq = A_ASSOCIATE_RQ()
        try:
            rq.decode(rq_bytes)
            answer = negotiate(state.spec, rq)
            full = answer.pdu if isinstance(answer, Accepted) else None
        except Exception:  # an undecodable request still gets the generic half
            full = None
    if full is None:
        full = encode_accept(
            state.spec.stack, "ANY-SCP", "ANY-SCU", [(1, 3, uids.IMPLICIT_VR_LITTLE_ENDIAN)]
        )
    return full[: max(7, len(full) // 2)]


async def _close_mid_pdu(
    state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
) -> None:
    rq_bytes: bytes | None = None
    with contextlib.suppress(TimeoutError, ProtocolError):
        async with asyncio.timeout(limits.association_timeout):
            rq_bytes = (await read_pdu(reader, MAX_ASSOCIATION_PDU)).data
    writer.write(half_accept(state, rq_bytes))
    async with asyncio.timeout(limits.idle_timeout):
        await writer.drain()


BEHAVIOURS: Final[dict[Profile, HostileBehaviour]] = {
    Profile.HOSTILE_GARBAGE: _garbage,
    Profile.HOSTILE_HUGE_PDU: _huge_pdu,
    Profile.HOSTILE_SILENT: _silent,
    Profile.HOSTILE_CLOSE_MID_PDU: _close_mid_pdu,
    # Other services on DICOM ports (lab.banners); the farm puts TLS in front of service-tls.
    Profile.SERVICE_HTTP: serve_http,
    Profile.SERVICE_SSH: serve_ssh,
    Profile.SERVICE_TLS: serve_http,
}
