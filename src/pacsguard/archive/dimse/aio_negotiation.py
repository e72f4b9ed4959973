"""Acceptor-side association negotiation for the asyncio front end (PS3.8 9.3.2-9.3.4).

The request's facts go to the gate first;
only then are presentation contexts negotiated, by pynetdicom's own `negotiate_as_acceptor`, over
the contexts `frontend.context_allowed` offers to that principal. Every PDU is encoded and decoded
by pynetdicom's classes.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
    negotiate_as_acceptor,
)

from pacsguard.archive.dimse.contexts import (
    QUERY_RETRIEVE_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
    context_allowed,
)
from pacsguard.archive.security.principal import (
    Action,
    AuthMethod,
    PeerFacts,
    Principal,
    UserIdentity,
)
from pacsguard.archive.security.tls import peer_cert_facts
from pacsguard.dicom import uids
from pacsguard.errors import MalformedPdu

#: A-ASSOCIATE-RJ rejected-transient, presentation-layer, local-limit-exceeded (PS3.8 9.3.4).
ASSOCIATION_LIMIT: Final = (2, 3, 2)

_SYNTAXES: Final[list[str | UID]] = list(TRANSFER_SYNTAXES)
_QUERY_RETRIEVE_SYNTAXES: Final[list[str | UID]] = list(QUERY_RETRIEVE_TRANSFER_SYNTAXES)
_QUERY_RETRIEVE: Final = (
    uids.PATIENT_ROOT_FIND,
    uids.STUDY_ROOT_FIND,
    uids.PATIENT_ROOT_MOVE,
    uids.STUDY_ROOT_MOVE,
    uids.PATIENT_ROOT_GET,
    uids.STUDY_ROOT_GET,
)


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context in use: what P-DATA on `context_id` means."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    #: Whether we (the acceptor) may send requests on it: C-STORE sub-operations of a C-GET.
    acceptor_is_scu: bool


@dataclass(frozen=True, slots=True)
class Accepted:
    pdu: bytes
    contexts: dict[int, AcceptedContext]
    #: Largest PDU the requestor accepts from us (0: no limit announced).
    peer_max_pdu: int


def decode_request(data: bytes) -> A_ASSOCIATE:
    """The A-ASSOCIATE primitive of an A-ASSOCIATE-RQ PDU; MalformedPdu on bad bytes."""
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(data)
        primitive = pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises assorted errors on bad bytes
        raise MalformedPdu(f"undecodable A-ASSOCIATE-RQ: {exc.__class__.__name__}") from None
    for context in primitive.presentation_context_definition_list:
        # PS3.8 9.3.2.2: one abstract syntax, at least one transfer syntax. pynetdicom decodes
        # an item without them, and its negotiation then raises TypeError (found by fuzzing).
        if context.context_id is None or not context.abstract_syntax:
            raise MalformedPdu("A-ASSOCIATE-RQ presentation context without abstract syntax")
        if not context.transfer_syntax:
            raise MalformedPdu("A-ASSOCIATE-RQ presentation context without transfer syntax")
    return primitive


def _user_identity(rq: A_ASSOCIATE) -> UserIdentityNegotiation | None:
    for item in rq.user_information:
        if isinstance(item, UserIdentityNegotiation):
            return item
    return None


def peer_facts(
    rq: A_ASSOCIATE, address: str, port: int, ssl_object: ssl.SSLObject | None
) -> PeerFacts:
    """What the transport and the request say about the peer, for the gate."""
    cert = peer_cert_facts(ssl_object) if ssl_object is not None else None
    sha, subject = cert if cert is not None else (None, None)
    identity = None
    item = _user_identity(rq)
    if item is not None:
        identity = UserIdentity(
            identity_type=int(item.user_identity_type or 0),
            primary=bytes(item.primary_field or b""),
            secondary=bytes(item.secondary_field or b""),
            positive_response_requested=bool(item.positive_response_requested),
        )
    return PeerFacts(
        address=address,
        port=port,
        calling_ae=str(rq.calling_ae_title).strip(),
        called_ae=str(rq.called_ae_title).strip(),
        tls=ssl_object is not None,
        client_cert_sha256=sha,
        client_cert_subject=subject,
        user_identity=identity,
    )


@lru_cache(maxsize=8)
def encode_reject(result: int, source: int, reason: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    return bytes(A_ASSOCIATE_RJ(primitive).encode())


def _supported(principal: Principal) -> tuple[PresentationContext, ...]:
    """The contexts the archive supports, filtered for what this principal may use."""
    return _supported_with(principal.permissions)


@lru_cache(maxsize=64)
def _supported_with(permissions: frozenset[Action]) -> tuple[PresentationContext, ...]:
    """Built once per set of permissions (negotiation only reads them): building ~150
    storage contexts with their transfer syntaxes took 25-40 ms of CPU per association, on
    the event loop."""
    holder = Principal("", "", AuthMethod.LAB, None, permissions)
    return tuple(cx for cx in _all_contexts() if context_allowed(holder, str(cx.abstract_syntax)))


@lru_cache(maxsize=1)
def _all_contexts() -> tuple[PresentationContext, ...]:
    contexts = [build_context(uids.VERIFICATION, _SYNTAXES)]
    for cx in AllStoragePresentationContexts:
        storage = build_context(str(cx.abstract_syntax), _SYNTAXES)
        storage.scu_role = True
        storage.scp_role = True
        contexts.append(storage)
    for abstract in sorted(_QUERY_RETRIEVE):
        contexts.append(build_context(abstract, _QUERY_RETRIEVE_SYNTAXES))
    return tuple(contexts)


def _identity_response(rq: A_ASSOCIATE) -> UserIdentityNegotiation | None:
    """The gate verified the identity already: a positive response only when requested, and
    (as pynetdicom's ACSE does) only for Kerberos, SAML and JWT identities (types 3, 4, 5)."""
    item = _user_identity(rq)
    if item is None or not item.positive_response_requested:
        return None
    if item.user_identity_type not in (3, 4, 5):
        return None
    response = UserIdentityNegotiation()
    response.server_response = b""
    return response


def accept(rq: A_ASSOCIATE, principal: Principal, max_pdu: int) -> Accepted:
    """Negotiate contexts and roles for an accepted principal; the A-ASSOCIATE-AC to send."""
    roles = {
        UID(str(item.sop_class_uid)): (item.scu_role, item.scp_role)
        for item in rq.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, role_items = negotiate_as_acceptor(
        rq.presentation_context_definition_list, list(_supported(principal)), roles or None
    )
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = rq.calling_ae_title
    primitive.called_ae_title = rq.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = uids.IMPLEMENTATION_CLASS_UID
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = uids.IMPLEMENTATION_VERSION_NAME
    info: list[object] = [max_length, impl_uid, impl_name, *role_items]
    identity = _identity_response(rq)
    if identity is not None:
        info.append(identity)
    primitive.user_information = info  # type: ignore[assignment]
    contexts = {
        int(cx.context_id): AcceptedContext(
            int(cx.context_id),
            str(cx.abstract_syntax),
            str(cx.transfer_syntax[0]),
            acceptor_is_scu=bool(cx.as_scu),
        )
        for cx in results
        if cx.result == 0x00 and cx.context_id is not None
    }
    peer_max = 0
    for item in rq.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
    return Accepted(bytes(A_ASSOCIATE_AC(primitive).encode()), contexts, peer_max)
