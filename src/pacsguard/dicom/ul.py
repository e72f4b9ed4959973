"""The DICOM upper layer (PS3.8) over asyncio streams: framing, and the association PDUs.

This module frames PDUs on a stream (6-byte header, bounded body). The requestor's association
PDUs (A-ASSOCIATE-RQ out, -AC/-RJ in, A-RELEASE, A-ABORT) are our own small codec in
`pacsguard.dicom.acse`, re-exported here, so that a scan never imports pynetdicom or pydicom
to verify a host; the archive's acceptor side is `pacsguard.dicom.acse_accept` (the lab's
acceptor still decodes requests with pynetdicom's PDU classes). pynetdicom's own transport is
thread-per-association, which cannot hold thousands of targets at once.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pacsguard.dicom import acse
from pacsguard.dicom.acse import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    REJECT_REASONS,
    RELEASE_RP,
    RELEASE_RP_BYTES,
    RELEASE_RQ,
    RELEASE_RQ_BYTES,
    AssociationAccepted,
    AssociationRejected,
    ContextResult,
    ProposedContext,
    encode_abort,
    propose,
)
from pacsguard.errors import MalformedPdu, PduTooLarge, PeerClosed

__all__ = [
    "ABORT",
    "ASSOCIATE_AC",
    "ASSOCIATE_RJ",
    "ASSOCIATE_RQ",
    "HEADER_LENGTH",
    "MAX_ASSOCIATION_PDU",
    "P_DATA_TF",
    "REJECT_REASONS",
    "RELEASE_RP",
    "RELEASE_RP_BYTES",
    "RELEASE_RQ",
    "RELEASE_RQ_BYTES",
    "AssociationAccepted",
    "AssociationRejected",
    "ContextResult",
    "ProposedContext",
    "RawPdu",
    "decode_associate_answer",
    "encode_abort",
    "encode_associate_rq",
    "propose",
    "read_pdu",
]

P_DATA_TF: Final = 0x04

HEADER_LENGTH: Final = 6
_HEADER = struct.Struct(">BBI")

#: Largest association PDU (RQ/AC/RJ) we accept; real ones are a few kilobytes.
MAX_ASSOCIATION_PDU: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class RawPdu:
    """One framed PDU: its type and its whole encoding (header included, as pynetdicom decodes)."""

    pdu_type: int
    data: bytes


async def read_pdu(reader: asyncio.StreamReader, max_length: int) -> RawPdu:
    """Read one PDU, refusing announced lengths above `max_length` before reading the body."""
    try:
        header = await reader.readexactly(HEADER_LENGTH)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise PeerClosed(
                f"connection closed inside a PDU header ({len(exc.partial)} of 6 bytes)"
            ) from None
        raise PeerClosed("connection closed by peer") from None
    except ConnectionError as exc:
        raise PeerClosed(f"connection reset: {exc.__class__.__name__}") from None
    pdu_type, _reserved, length = _HEADER.unpack(header)
    if not ASSOCIATE_RQ <= pdu_type <= ABORT:
        raise MalformedPdu(f"unknown PDU type 0x{pdu_type:02x}: not a DICOM upper-layer peer")
    if length > max_length:
        raise PduTooLarge(pdu_type, length, max_length)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise PeerClosed(
            f"connection closed inside a PDU body ({len(exc.partial)} of {length} bytes)"
        ) from None
    except ConnectionError as exc:
        raise PeerClosed(f"connection reset: {exc.__class__.__name__}") from None
    return RawPdu(pdu_type, header + body)


@lru_cache(maxsize=256)
def encode_associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: tuple[ProposedContext, ...],
    max_pdu: int,
) -> bytes:
    """Encode an A-ASSOCIATE-RQ. Cached: a scan sends the same few requests to every host."""
    return acse.encode_associate_rq(calling_ae, called_ae, contexts, max_pdu)


def decode_associate_answer(
    pdu: RawPdu, proposed: Sequence[ProposedContext]
) -> AssociationAccepted | AssociationRejected:
    """Turn the acceptor's answer into a plain value; anything else is a protocol error."""
    return acse.decode_associate_answer(pdu.pdu_type, pdu.data, proposed)
