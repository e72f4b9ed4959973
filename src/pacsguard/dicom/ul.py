"""The DICOM upper layer (PS3.8) over asyncio streams, with pynetdicom's PDU classes as codec.

pynetdicom encodes and decodes every PDU; this module only frames PDUs on a stream, bounds their
size, and turns A-ASSOCIATE-AC/RJ into plain values. We write no PDU codec of our own: pynetdicom's
own transport is thread-per-association, which cannot hold thousands of targets at once, so the
framing (6-byte header, bounded body) is the only wire code here.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
)
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_RELEASE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from pacsguard.dicom import uids
from pacsguard.errors import MalformedPdu, PduTooLarge, PeerClosed

ASSOCIATE_RQ: Final = 0x01
ASSOCIATE_AC: Final = 0x02
ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
RELEASE_RQ: Final = 0x05
RELEASE_RP: Final = 0x06
ABORT: Final = 0x07

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


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """A presentation context we propose: id, abstract syntax and transfer syntaxes."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...] = (
        uids.EXPLICIT_VR_LITTLE_ENDIAN,
        uids.IMPLICIT_VR_LITTLE_ENDIAN,
    )


def propose(abstract_syntaxes: Sequence[str]) -> tuple[ProposedContext, ...]:
    """Presentation contexts with odd ids 1, 3, 5... (PS3.8 9.3.2.2)."""
    return tuple(ProposedContext(2 * i + 1, a) for i, a in enumerate(abstract_syntaxes))


@lru_cache(maxsize=256)
def encode_associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: tuple[ProposedContext, ...],
    max_pdu: int,
) -> bytes:
    """Encode an A-ASSOCIATE-RQ. Cached: a scan sends the same few requests to every host."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = uids.IMPLEMENTATION_CLASS_UID
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = uids.IMPLEMENTATION_VERSION_NAME
    primitive.user_information = [max_length, impl_uid, impl_name]
    pcs = []
    for proposed in contexts:
        pc = PresentationContext()
        pc.context_id = proposed.context_id
        pc.abstract_syntax = proposed.abstract_syntax
        pc.transfer_syntax = list(proposed.transfer_syntaxes)
        pcs.append(pc)
    primitive.presentation_context_definition_list = pcs
    return bytes(A_ASSOCIATE_RQ(primitive).encode())


@dataclass(frozen=True, slots=True)
class ContextResult:
    """The acceptor's answer for one proposed presentation context (PS3.8 9.3.3.2)."""

    context_id: int
    abstract_syntax: str
    result: int  # 0 acceptance, 1 user-rejection, 2 no-reason, 3 abstract syntax, 4 transfer syntax
    transfer_syntax: str | None

    @property
    def accepted(self) -> bool:
        return self.result == 0


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    """Everything an A-ASSOCIATE-AC tells about the peer."""

    contexts: tuple[ContextResult, ...]
    max_pdu: int | None
    implementation_class_uid: str | None
    implementation_version_name: str | None

    def accepted_context(self, abstract_syntax: str) -> ContextResult | None:
        for ctx in self.contexts:
            if ctx.abstract_syntax == abstract_syntax and ctx.accepted:
                return ctx
        return None


#: PS3.8 Table 9-21 reasons, by (source, reason).
REJECT_REASONS: Final[dict[tuple[int, int], str]] = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-ae-title-not-recognized",
    (1, 7): "called-ae-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """An A-ASSOCIATE-RJ.

    Result 1 permanent / 2 transient; source 1 service user / 2 ACSE / 3 presentation layer.
    """

    result: int
    source: int
    reason: int

    @property
    def reason_name(self) -> str:
        return REJECT_REASONS.get((self.source, self.reason), f"reason-{self.reason}")

    @property
    def permanent(self) -> bool:
        return self.result == 1


def decode_associate_answer(
    pdu: RawPdu, proposed: Sequence[ProposedContext]
) -> AssociationAccepted | AssociationRejected:
    """Turn the acceptor's answer into a plain value; anything else is a protocol error."""
    if pdu.pdu_type == ASSOCIATE_AC:
        ac = A_ASSOCIATE_AC()
        try:
            ac.decode(pdu.data)
        except Exception as exc:  # pynetdicom raises assorted errors on bad bytes
            raise MalformedPdu(f"undecodable A-ASSOCIATE-AC: {exc.__class__.__name__}") from None
        by_id = {p.context_id: p.abstract_syntax for p in proposed}
        contexts = []
        try:
            for item in ac.presentation_context:
                cid = item.context_id
                if cid is None or cid not in by_id:
                    continue
                syntax = item.transfer_syntax
                contexts.append(
                    ContextResult(
                        context_id=cid,
                        abstract_syntax=by_id[cid],
                        result=int(item.result_reason or 0),
                        transfer_syntax=str(syntax) if syntax else None,
                    )
                )
        except Exception as exc:  # a sub-item of another type where the syntax belongs (fuzzing)
            raise MalformedPdu(f"undecodable A-ASSOCIATE-AC: {exc.__class__.__name__}") from None
        max_pdu = impl_uid = impl_name = None
        if ac.user_information is not None:
            info = ac.user_information
            max_pdu = info.maximum_length
            impl_uid = str(info.implementation_class_uid) if info.implementation_class_uid else None
            impl_name = info.implementation_version_name
        return AssociationAccepted(
            contexts=tuple(contexts),
            max_pdu=max_pdu,
            implementation_class_uid=impl_uid,
            implementation_version_name=_printable(impl_name),
        )
    if pdu.pdu_type == ASSOCIATE_RJ:
        rj = A_ASSOCIATE_RJ()
        try:
            rj.decode(pdu.data)
        except Exception as exc:
            raise MalformedPdu(f"undecodable A-ASSOCIATE-RJ: {exc.__class__.__name__}") from None
        return AssociationRejected(
            result=int(rj.result or 0),
            source=int(rj.source or 0),
            reason=int(rj.reason_diagnostic or 0),
        )
    if pdu.pdu_type == ABORT:
        raise PeerClosed("peer sent A-ABORT in answer to A-ASSOCIATE-RQ")
    raise MalformedPdu(f"expected A-ASSOCIATE-AC or -RJ, got PDU type 0x{pdu.pdu_type:02x}")


def _printable(value: str | bytes | None) -> str | None:
    """Version names come from the remote: keep printable ASCII only, at most 16 characters."""
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    cleaned = "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F).strip()
    return cleaned[:16] or None


RELEASE_RQ_BYTES: Final = bytes(A_RELEASE_RQ(A_RELEASE()).encode())
RELEASE_RP_BYTES: Final = bytes(A_RELEASE_RP(A_RELEASE()).encode())


def encode_abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT PDU; source 0 = service user, 2 = service provider (PS3.8 9.3.8)."""
    primitive = A_ABORT()
    primitive.abort_source = source
    pdu = A_ABORT_RQ(primitive)
    pdu.reason_diagnostic = reason
    return bytes(pdu.encode())
