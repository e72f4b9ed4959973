"""The requestor's side of association control (PS3.8 9.3): A-ASSOCIATE-RQ out, A-ASSOCIATE-AC or
-RJ in, A-RELEASE and A-ABORT, as bytes and plain values.

Why our own codec and not pynetdicom's PDU classes (the acceptor's side is
`pacsguard.dicom.acse_accept`, for CPU time rather than start-up): importing
pynetdicom imports pydicom, 110 to 300 ms of start-up on this machine, which a verification
scan (`pacsguard scan --no-echo --no-count`) would pay only to build one fixed request and read a
few fields of the answer. These PDUs are fixed layouts of big-endian integers and length-prefixed
items, so the code is short; it is checked against pynetdicom as oracle
(`tests/unit/test_acse_codec.py`: byte-identical requests, the same facts read from answers
pynetdicom encodes, property-based with Hypothesis) and fuzzed (`tests/fuzz/targets/associate.py`).

Answers come from strangers: every length is checked against the bytes actually there, and
anything that does not frame is `MalformedPdu`, never another exception.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from pacsguard.dicom import uids
from pacsguard.errors import MalformedPdu, PeerClosed

ASSOCIATE_RQ: Final = 0x01
ASSOCIATE_AC: Final = 0x02
ASSOCIATE_RJ: Final = 0x03
RELEASE_RQ: Final = 0x05
RELEASE_RP: Final = 0x06
ABORT: Final = 0x07

_PDU_HEADER: Final = struct.Struct(">BBI")
_ITEM_HEADER: Final = struct.Struct(">BBH")
#: Protocol version, reserved, called AE, calling AE, 32 reserved bytes (PS3.8 Table 9-11).
_FIXED: Final = struct.Struct(">HH16s16s32s")
_FIXED_END: Final = _PDU_HEADER.size + _FIXED.size

APPLICATION_CONTEXT_ITEM: Final = 0x10
PRESENTATION_CONTEXT_RQ_ITEM: Final = 0x20
PRESENTATION_CONTEXT_AC_ITEM: Final = 0x21
ABSTRACT_SYNTAX_SUB_ITEM: Final = 0x30
TRANSFER_SYNTAX_SUB_ITEM: Final = 0x40
USER_INFORMATION_ITEM: Final = 0x50
MAXIMUM_LENGTH_SUB_ITEM: Final = 0x51
IMPLEMENTATION_CLASS_UID_SUB_ITEM: Final = 0x52
IMPLEMENTATION_VERSION_NAME_SUB_ITEM: Final = 0x55


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


# -- encoding ---------------------------------------------------------------------------------


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value


def _ae_title(title: str) -> bytes:
    """16 bytes, space padded (PS3.8 9.3.2); the caller validated the title."""
    return title.encode("ascii").ljust(16, b" ")


def encode_associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: tuple[ProposedContext, ...],
    max_pdu: int,
) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2): application context, `contexts`, and user information
    with our maximum PDU length, implementation class UID and version name."""
    items = [_item(APPLICATION_CONTEXT_ITEM, uids.APPLICATION_CONTEXT.encode("ascii"))]
    for proposed in contexts:
        sub = _item(ABSTRACT_SYNTAX_SUB_ITEM, proposed.abstract_syntax.encode("ascii"))
        sub += b"".join(
            _item(TRANSFER_SYNTAX_SUB_ITEM, ts.encode("ascii"))
            for ts in dict.fromkeys(proposed.transfer_syntaxes)  # each once, as pynetdicom does
        )
        header = bytes([proposed.context_id, 0, 0, 0])
        items.append(_item(PRESENTATION_CONTEXT_RQ_ITEM, header + sub))
    user = _item(MAXIMUM_LENGTH_SUB_ITEM, struct.pack(">I", max_pdu))
    user += _item(IMPLEMENTATION_CLASS_UID_SUB_ITEM, uids.IMPLEMENTATION_CLASS_UID.encode("ascii"))
    user += _item(
        IMPLEMENTATION_VERSION_NAME_SUB_ITEM, uids.IMPLEMENTATION_VERSION_NAME.encode("ascii")
    )
    items.append(_item(USER_INFORMATION_ITEM, user))
    body = _FIXED.pack(1, 0, _ae_title(called_ae), _ae_title(calling_ae), b"") + b"".join(items)
    return _PDU_HEADER.pack(ASSOCIATE_RQ, 0, len(body)) + body


def _fixed_pdu(pdu_type: int, b1: int = 0, b2: int = 0) -> bytes:
    return _PDU_HEADER.pack(pdu_type, 0, 4) + bytes([0, 0, b1, b2])


#: A-RELEASE-RQ and -RP (PS3.8 9.3.6, 9.3.7): four reserved bytes each.
RELEASE_RQ_BYTES: Final = _fixed_pdu(RELEASE_RQ)
RELEASE_RP_BYTES: Final = _fixed_pdu(RELEASE_RP)


def encode_abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT PDU; source 0 = service user, 2 = service provider (PS3.8 9.3.8)."""
    return _fixed_pdu(ABORT, source, reason)


# -- decoding ---------------------------------------------------------------------------------


def _items(data: bytes, start: int, end: int, what: str) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value end) of each item in data[start:end]; lengths are checked."""
    offset = start
    while offset < end:
        if offset + _ITEM_HEADER.size > end:
            raise MalformedPdu(f"undecodable {what}: an item header is cut off")
        item_type, _reserved, length = _ITEM_HEADER.unpack_from(data, offset)
        value = offset + _ITEM_HEADER.size
        if value + length > end:
            raise MalformedPdu(f"undecodable {what}: item 0x{item_type:02x} overruns its parent")
        yield item_type, value, value + length
        offset = value + length


def _uid(raw: bytes, what: str) -> str | None:
    """A UID field: ASCII, one trailing NUL pad allowed (PS3.8 Annex F), 1 to 64 characters
    (pynetdicom's rule when it does not enforce conformance); empty is None."""
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise MalformedPdu(f"undecodable A-ASSOCIATE-AC: {what} is not ASCII") from None
    if len(text) > 64:
        raise MalformedPdu(f"undecodable A-ASSOCIATE-AC: {what} longer than 64 characters")
    return text or None


def _printable(value: bytes | None) -> str | None:
    """Version names come from the remote: keep printable ASCII only, at most 16 characters."""
    if value is None:
        return None
    text = value.decode("ascii", "replace")
    cleaned = "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F).strip()
    return cleaned[:16] or None


def _decode_accept(data: bytes, proposed: Sequence[ProposedContext]) -> AssociationAccepted:
    what = "A-ASSOCIATE-AC"
    if len(data) < _FIXED_END:
        raise MalformedPdu(f"undecodable {what}: {len(data)} bytes, shorter than its fixed part")
    by_id = {p.context_id: p.abstract_syntax for p in proposed}
    contexts: list[ContextResult] = []
    max_pdu: int | None = None
    impl_uid: str | None = None
    impl_name: bytes | None = None
    for item_type, start, end in _items(data, _FIXED_END, len(data), what):
        if item_type == PRESENTATION_CONTEXT_AC_ITEM:
            if end - start < 4:
                raise MalformedPdu(f"undecodable {what}: presentation context item too short")
            cid, result = data[start], data[start + 2]
            syntax: str | None = None
            for sub_type, s_start, s_end in _items(data, start + 4, end, what):
                if sub_type != TRANSFER_SYNTAX_SUB_ITEM:
                    raise MalformedPdu(
                        f"undecodable {what}: sub-item 0x{sub_type:02x} in a presentation context"
                    )
                if syntax is None:
                    syntax = _uid(data[s_start:s_end], "a transfer syntax")
            if cid in by_id:
                contexts.append(ContextResult(cid, by_id[cid], result, syntax))
        elif item_type == USER_INFORMATION_ITEM:
            for sub_type, s_start, s_end in _items(data, start, end, what):
                value = data[s_start:s_end]
                if sub_type == MAXIMUM_LENGTH_SUB_ITEM:
                    if len(value) < 4:
                        raise MalformedPdu(f"undecodable {what}: maximum length sub-item too short")
                    max_pdu = struct.unpack_from(">I", value)[0]
                elif sub_type == IMPLEMENTATION_CLASS_UID_SUB_ITEM:
                    impl_uid = _uid(value, "the implementation class UID")
                elif sub_type == IMPLEMENTATION_VERSION_NAME_SUB_ITEM:
                    impl_name = value
                # Other sub-items (asynchronous operations, roles, extended negotiation, user
                # identity response) say nothing the scanner reports.
        # The application context item and any item of a type PS3.8 does not define for an
        # A-ASSOCIATE-AC carry nothing the requestor needs.
    return AssociationAccepted(
        contexts=tuple(contexts),
        max_pdu=max_pdu,
        implementation_class_uid=impl_uid,
        implementation_version_name=_printable(impl_name),
    )


def decode_associate_answer(
    pdu_type: int, data: bytes, proposed: Sequence[ProposedContext]
) -> AssociationAccepted | AssociationRejected:
    """The acceptor's answer (`data`: the whole PDU, header included) as a plain value; an
    A-ABORT is PeerClosed, anything else a MalformedPdu."""
    if pdu_type == ASSOCIATE_AC:
        return _decode_accept(data, proposed)
    if pdu_type == ASSOCIATE_RJ:
        if len(data) < _PDU_HEADER.size + 4:
            raise MalformedPdu(f"undecodable A-ASSOCIATE-RJ: {len(data)} bytes, not 10")
        _reserved, result, source, reason = data[6:10]
        return AssociationRejected(result=result, source=source, reason=reason)
    if pdu_type == ABORT:
        raise PeerClosed("peer sent A-ABORT in answer to A-ASSOCIATE-RQ")
    raise MalformedPdu(f"expected A-ASSOCIATE-AC or -RJ, got PDU type 0x{pdu_type:02x}")
