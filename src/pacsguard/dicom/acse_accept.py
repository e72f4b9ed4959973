"""The acceptor's side of association control (PS3.8 9.3): A-ASSOCIATE-RQ in as plain frozen
values, presentation-context and role negotiation as a pure function, A-ASSOCIATE-AC and -RJ out.

Why our own code and not pynetdicom's PDU classes and `negotiate_as_acceptor` (which the archive
used until issue 9): decoding a dcmtk storescu request (about 120 presentation contexts) through
pynetdicom's primitives validated every UID with pydicom several times over and cost 10-30 ms of
CPU per association on the event loop. These PDUs are fixed layouts of big-endian integers and
length-prefixed items (the requestor's side is `pacsguard.dicom.acse`); the negotiation follows
pynetdicom's `negotiate_as_acceptor` rule for rule. Both are checked against pynetdicom as oracle
(`tests/unit/test_acse_accept.py`: the same facts as pynetdicom's decoder, the same negotiation
results, A-ASSOCIATE-AC bytes identical to pynetdicom's, property-based with Hypothesis) and fuzzed
(`tests/fuzz/targets/associate.py`).

Requests come from strangers: every length is checked against the bytes actually there, and
anything that does not frame, or that pynetdicom would refuse (an even context id, a UID longer
than 64 characters, an AE title with control characters...), is `MalformedPdu`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pacsguard.dicom import uids
from pacsguard.dicom.acse import (
    _FIXED,
    _FIXED_END,
    _PDU_HEADER,
    ABSTRACT_SYNTAX_SUB_ITEM,
    APPLICATION_CONTEXT_ITEM,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    IMPLEMENTATION_CLASS_UID_SUB_ITEM,
    IMPLEMENTATION_VERSION_NAME_SUB_ITEM,
    MAXIMUM_LENGTH_SUB_ITEM,
    PRESENTATION_CONTEXT_AC_ITEM,
    PRESENTATION_CONTEXT_RQ_ITEM,
    TRANSFER_SYNTAX_SUB_ITEM,
    USER_INFORMATION_ITEM,
    _item,
    _items,
)
from pacsguard.errors import MalformedPdu

ASYNCHRONOUS_OPERATIONS_SUB_ITEM: Final = 0x53
ROLE_SELECTION_SUB_ITEM: Final = 0x54
SOP_CLASS_EXTENDED_SUB_ITEM: Final = 0x56
SOP_CLASS_COMMON_EXTENDED_SUB_ITEM: Final = 0x57
USER_IDENTITY_RQ_SUB_ITEM: Final = 0x58
USER_IDENTITY_AC_SUB_ITEM: Final = 0x59

_WHAT: Final = "A-ASSOCIATE-RQ"
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class RequestedContext:
    """A proposed presentation context: odd id, abstract syntax, transfer syntaxes (each once,
    in the requestor's order)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RequestedIdentity:
    """A User Identity Negotiation sub-item (PS3.7 D.3.3.7): type 1 username, 2 username and
    passcode, 3 Kerberos, 4 SAML, 5 JWT."""

    identity_type: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """An SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): the roles the requestor proposes."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """Everything an A-ASSOCIATE-RQ says, AE titles without their padding."""

    called_ae: str
    calling_ae: str
    application_context: str | None
    contexts: tuple[RequestedContext, ...]
    #: The last Maximum Length sub-item's value (the first of the other sub-items counts).
    max_pdu: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    user_identity: RequestedIdentity | None = None
    roles: tuple[RoleSelection, ...] = ()
    #: (invoked, performed), read and otherwise ignored: we perform one operation at a time.
    async_ops_window: tuple[int, int] | None = None


# -- decoding ---------------------------------------------------------------------------------


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedPdu(f"undecodable {_WHAT}: {what} is not ASCII") from None


def _uid(raw: bytes, what: str) -> str:
    """A UID field as pynetdicom reads it: one trailing NUL pad dropped, ASCII, surrounding
    whitespace dropped, at most 64 characters (it does not enforce conformance); may be empty."""
    if raw[-1:] == b"\x00":
        raw = raw[:-1]
    text = _ascii(raw, what).strip()
    if len(text) > 64:
        raise MalformedPdu(f"undecodable {_WHAT}: {what} longer than 64 characters")
    return text


def _ae_like(text: str, what: str) -> str:
    """pynetdicom's AE rule: at most 16 characters, no control characters, no backslash."""
    if len(text) > 16 or "\\" in text or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise MalformedPdu(f"undecodable {_WHAT}: {what} is not a valid AE-like value")
    return text


def _ae_title(raw: bytes, what: str) -> str:
    text = _ascii(raw, what).strip()
    if not text:
        raise MalformedPdu(f"undecodable {_WHAT}: {what} is empty")
    return _ae_like(text, what)


def _context(data: bytes, start: int, end: int) -> RequestedContext:
    if start == end:
        raise MalformedPdu(f"undecodable {_WHAT}: empty presentation context item")
    context_id = data[start]
    if context_id % 2 == 0:
        raise MalformedPdu(f"undecodable {_WHAT}: presentation context id {context_id} is even")
    abstract: str | None = None
    syntaxes: dict[str, None] = {}
    for sub_type, s_start, s_end in _items(data, start + 4, end, _WHAT):
        if sub_type == ABSTRACT_SYNTAX_SUB_ITEM:
            if abstract is not None:
                raise MalformedPdu(f"undecodable {_WHAT}: two abstract syntaxes in one context")
            abstract = _uid(data[s_start:s_end], "an abstract syntax")
        elif sub_type == TRANSFER_SYNTAX_SUB_ITEM:
            syntax = _uid(data[s_start:s_end], "a transfer syntax")
            if syntax:  # pynetdicom drops empty ones, and repeats
                syntaxes[syntax] = None
        else:
            raise MalformedPdu(
                f"undecodable {_WHAT}: sub-item 0x{sub_type:02x} in a presentation context"
            )
    # PS3.8 9.3.2.2: one abstract syntax, at least one transfer syntax.
    if not abstract:
        raise MalformedPdu(f"{_WHAT} presentation context without abstract syntax")
    if not syntaxes:
        raise MalformedPdu(f"{_WHAT} presentation context without transfer syntax")
    return RequestedContext(context_id, abstract, tuple(syntaxes))


def _length_prefixed(value: bytes, offset: int, what: str) -> tuple[bytes, int]:
    """The field at `offset` prefixed by its 2-byte length, and the offset after it."""
    if offset + 2 > len(value):
        raise MalformedPdu(f"undecodable {_WHAT}: {what} length is cut off")
    (length,) = _U16.unpack_from(value, offset)
    if offset + 2 + length > len(value):
        raise MalformedPdu(f"undecodable {_WHAT}: {what} overruns its sub-item")
    return value[offset + 2 : offset + 2 + length], offset + 2 + length


def _identity(value: bytes) -> RequestedIdentity:
    if len(value) < 2:
        raise MalformedPdu(f"undecodable {_WHAT}: user identity sub-item too short")
    kind, positive = value[0], value[1]
    if kind not in (1, 2, 3, 4, 5):
        raise MalformedPdu(f"undecodable {_WHAT}: user identity type {kind}")
    primary, offset = _length_prefixed(value, 2, "the user identity primary field")
    secondary, offset = _length_prefixed(value, offset, "the user identity secondary field")
    if offset != len(value):
        raise MalformedPdu(f"undecodable {_WHAT}: bytes after the user identity fields")
    return RequestedIdentity(kind, bool(positive), primary, secondary)


def _common_extended(value: bytes) -> None:
    """Checks the framing of a SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6);
    its content is not used."""
    _uid_value, offset = _length_prefixed(value, 0, "a SOP class UID")
    _uid_value, offset = _length_prefixed(value, offset, "a service class UID")
    related, offset = _length_prefixed(value, offset, "the related SOP classes")
    position = 0
    while position < len(related):
        _uid_value, position = _length_prefixed(related, position, "a related SOP class UID")
    if offset != len(value):
        raise MalformedPdu(f"undecodable {_WHAT}: bytes after a common extended negotiation")


def decode_associate_rq(data: bytes) -> AssociationRequest:
    """An A-ASSOCIATE-RQ (`data`: the whole PDU, header included) as a plain value."""
    if len(data) < _FIXED_END:
        raise MalformedPdu(f"undecodable {_WHAT}: {len(data)} bytes, shorter than its fixed part")
    _version, _reserved, called, calling, _ = _FIXED.unpack_from(data, _PDU_HEADER.size)
    called_ae = _ae_title(called, "the called AE title")
    calling_ae = _ae_title(calling, "the calling AE title")
    application_context: str | None = None
    contexts: list[RequestedContext] = []
    max_pdu: int | None = None
    impl_uid: str | None = None
    impl_name: str | None = None
    identity: RequestedIdentity | None = None
    roles: list[RoleSelection] = []
    window: tuple[int, int] | None = None
    for item_type, start, end in _items(data, _FIXED_END, len(data), _WHAT):
        if item_type == PRESENTATION_CONTEXT_RQ_ITEM:
            contexts.append(_context(data, start, end))
        elif item_type == APPLICATION_CONTEXT_ITEM:
            name = _uid(data[start:end], "the application context name")
            if application_context is None:
                application_context = name
        elif item_type == USER_INFORMATION_ITEM:
            for sub_type, s_start, s_end in _items(data, start, end, _WHAT):
                value = data[s_start:s_end]
                if sub_type == MAXIMUM_LENGTH_SUB_ITEM:
                    if len(value) != 4:
                        raise MalformedPdu(f"undecodable {_WHAT}: maximum length is not 4 bytes")
                    (max_pdu,) = _U32.unpack(value)
                elif sub_type == IMPLEMENTATION_CLASS_UID_SUB_ITEM:
                    uid_value = _uid(value, "the implementation class UID") or None
                    impl_uid = impl_uid or uid_value  # the first one, as pynetdicom reads it
                elif sub_type == IMPLEMENTATION_VERSION_NAME_SUB_ITEM:
                    name = _ae_like(_ascii(value, "the version name"), "the version name")
                    impl_name = impl_name or name
                elif sub_type == ASYNCHRONOUS_OPERATIONS_SUB_ITEM:
                    if len(value) < 4:
                        raise MalformedPdu(f"undecodable {_WHAT}: asynchronous operations window")
                    window = window or (_U16.unpack_from(value)[0], _U16.unpack_from(value, 2)[0])
                elif sub_type == ROLE_SELECTION_SUB_ITEM:
                    uid, offset = _length_prefixed(value, 0, "a role selection SOP class")
                    if offset + 2 > len(value):
                        raise MalformedPdu(f"undecodable {_WHAT}: role selection roles cut off")
                    sop_class = _uid(uid, "a role selection SOP class")
                    scu, scp = bool(value[offset]), bool(value[offset + 1])
                    roles.append(RoleSelection(sop_class, scu, scp))
                elif sub_type == SOP_CLASS_EXTENDED_SUB_ITEM:
                    uid, _offset = _length_prefixed(value, 0, "an extended negotiation SOP class")
                    _uid(uid, "an extended negotiation SOP class")
                elif sub_type == SOP_CLASS_COMMON_EXTENDED_SUB_ITEM:
                    _common_extended(value)
                elif sub_type == USER_IDENTITY_RQ_SUB_ITEM:
                    first = _identity(value)
                    identity = identity or first  # the first one counts, as in the archive
                else:
                    raise MalformedPdu(
                        f"undecodable {_WHAT}: sub-item 0x{sub_type:02x} in user information"
                    )
        else:
            raise MalformedPdu(f"undecodable {_WHAT}: item 0x{item_type:02x}")
    return AssociationRequest(
        called_ae=called_ae,
        calling_ae=calling_ae,
        application_context=application_context,
        contexts=tuple(contexts),
        max_pdu=max_pdu,
        implementation_class_uid=impl_uid,
        implementation_version_name=impl_name or None,
        user_identity=identity,
        roles=tuple(roles),
        async_ops_window=window,
    )


# -- negotiation (PS3.8 9.3.3.2, PS3.7 D.3.3.4) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class SupportedContext:
    """What the acceptor offers for one abstract syntax: transfer syntaxes in its order of
    preference, and the roles it may take (None: only the default roles, no role reply)."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    scu_role: bool | None = None
    scp_role: bool | None = None


@dataclass(frozen=True, slots=True)
class NegotiatedContext:
    """The answer for one proposed context: result 0 acceptance, 1 user-rejection (no role
    left), 3 abstract syntax not supported, 4 transfer syntaxes not supported; the transfer
    syntax accepted (for a rejection: the requestor's first); the acceptor's roles on it."""

    context_id: int
    abstract_syntax: str
    result: int
    transfer_syntax: str
    as_scu: bool = False
    as_scp: bool = False


#: Outcomes (acceptor as SCU, acceptor as SCP) of pynetdicom's SCP_SCU_ROLES table, for a
#: requestor's proposal (SCU, SCP) and the acceptor's own (SCU, SCP), both given.
_DEFAULT: Final = (False, True)
_BOTH: Final = (True, True)
_INVERTED: Final = (True, False)
_REJECTED: Final = (False, False)
_ROLE_OUTCOMES: Final[dict[tuple[bool, bool], dict[tuple[bool, bool], tuple[bool, bool]]]] = {
    (True, True): {
        (True, True): _BOTH,
        (True, False): _DEFAULT,
        (False, False): _REJECTED,
        (False, True): _INVERTED,
    },
    (True, False): {
        (True, True): _DEFAULT,
        (True, False): _DEFAULT,
        (False, False): _REJECTED,
        (False, True): _REJECTED,
    },
    (False, True): {
        (True, True): _INVERTED,
        (True, False): _REJECTED,
        (False, False): _REJECTED,
        (False, True): _INVERTED,
    },
    (False, False): {
        (True, True): _REJECTED,
        (True, False): _REJECTED,
        (False, False): _REJECTED,
        (False, True): _REJECTED,
    },
}


def negotiate(
    proposed: Sequence[RequestedContext],
    supported: Mapping[str, SupportedContext],
    roles: Iterable[RoleSelection] = (),
) -> tuple[tuple[NegotiatedContext, ...], tuple[RoleSelection, ...]]:
    """Each proposed context's result, sorted by id, and the role selection replies, sorted by
    SOP class: pynetdicom's `negotiate_as_acceptor`, rule for rule. The transfer syntax is the
    first of *ours* the requestor proposed; a context proposed twice with the same id and
    abstract syntax is answered once (the last proposal, at the first one's place)."""
    if not proposed:
        return (), ()
    if not supported:  # pynetdicom answers each proposal as it came, unsorted
        return tuple(
            NegotiatedContext(p.context_id, p.abstract_syntax, 3, p.transfer_syntaxes[0])
            for p in proposed
        ), ()
    requested = {r.sop_class_uid: (r.scu_role, r.scp_role) for r in roles if r.sop_class_uid}
    unique = {(p.context_id, p.abstract_syntax): p for p in proposed}
    results: list[NegotiatedContext] = []
    replies: dict[str, RoleSelection] = {}
    for (context_id, abstract), offer in unique.items():
        ours = supported.get(abstract)
        if ours is None:
            results.append(NegotiatedContext(context_id, abstract, 3, offer.transfer_syntaxes[0]))
            continue
        syntax = next((ts for ts in ours.transfer_syntaxes if ts in offer.transfer_syntaxes), None)
        if syntax is None:
            results.append(NegotiatedContext(context_id, abstract, 4, offer.transfer_syntaxes[0]))
            continue
        their = requested.get(abstract)
        reply: RoleSelection | None = None
        if ours.scu_role is None or ours.scp_role is None:
            as_scu, as_scp = _DEFAULT  # and no role reply without roles of our own
        elif their is None:
            as_scu, as_scp = _DEFAULT
        else:
            as_scu, as_scp = _ROLE_OUTCOMES[their][(ours.scu_role, ours.scp_role)]
            # The acceptor may not answer 1 to a role the requestor proposed as 0.
            reply = RoleSelection(abstract, their[0] and ours.scu_role, their[1] and ours.scp_role)
        if not as_scu and not as_scp:
            results.append(NegotiatedContext(context_id, abstract, 1, syntax))
            continue
        results.append(NegotiatedContext(context_id, abstract, 0, syntax, as_scu, as_scp))
        if reply is not None:
            replies[abstract] = reply
    results.sort(key=lambda r: r.context_id)
    return tuple(results), tuple(sorted(replies.values(), key=lambda r: r.sop_class_uid))


# -- encoding ---------------------------------------------------------------------------------


def _ascii_item(item_type: int, text: str) -> bytes:
    return _item(item_type, text.encode("ascii"))


def encode_associate_ac(
    request: AssociationRequest,
    results: Sequence[NegotiatedContext],
    roles: Sequence[RoleSelection],
    max_pdu: int,
    identity_response: bytes | None = None,
) -> bytes:
    """An A-ASSOCIATE-AC (PS3.8 9.3.3), as pynetdicom encodes it: our application context, one
    item per result, user information with our maximum length, implementation class UID and
    version name, the role replies, and a user identity server response when given."""
    items = [_ascii_item(APPLICATION_CONTEXT_ITEM, uids.APPLICATION_CONTEXT)]
    for result in results:
        syntax = _ascii_item(TRANSFER_SYNTAX_SUB_ITEM, result.transfer_syntax)
        header = bytes([result.context_id, 0, result.result, 0])
        items.append(_item(PRESENTATION_CONTEXT_AC_ITEM, header + syntax))
    user = [
        _item(MAXIMUM_LENGTH_SUB_ITEM, _U32.pack(max_pdu)),
        _ascii_item(IMPLEMENTATION_CLASS_UID_SUB_ITEM, uids.IMPLEMENTATION_CLASS_UID),
        _ascii_item(IMPLEMENTATION_VERSION_NAME_SUB_ITEM, uids.IMPLEMENTATION_VERSION_NAME),
    ]
    for role in roles:
        uid = role.sop_class_uid.encode("ascii")
        value = _U16.pack(len(uid)) + uid + bytes([role.scu_role, role.scp_role])
        user.append(_item(ROLE_SELECTION_SUB_ITEM, value))
    if identity_response is not None:
        value = _U16.pack(len(identity_response)) + identity_response
        user.append(_item(USER_IDENTITY_AC_SUB_ITEM, value))
    items.append(_item(USER_INFORMATION_ITEM, b"".join(user)))
    called = request.called_ae.encode("ascii").ljust(16, b" ")
    calling = request.calling_ae.encode("ascii").ljust(16, b" ")
    body = _FIXED.pack(1, 0, called, calling, b"") + b"".join(items)
    return _PDU_HEADER.pack(ASSOCIATE_AC, 0, len(body)) + body


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent / 2 transient, source 1 service user
    / 2 ACSE / 3 presentation layer, and the reason."""
    return _PDU_HEADER.pack(ASSOCIATE_RJ, 0, 4) + bytes([0, result, source, reason])
