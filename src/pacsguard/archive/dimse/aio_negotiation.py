"""Acceptor-side association negotiation for the asyncio front end (PS3.8 9.3.2-9.3.4).

The request's facts go to the gate first;
only then are presentation contexts negotiated (`pacsguard.dicom.acse_accept.negotiate`, the
rules of pynetdicom's `negotiate_as_acceptor`), over the contexts `frontend.context_allowed`
offers to that principal. The association PDUs are our own codec, `pacsguard.dicom.acse_accept`:
pynetdicom's PDU classes cost 10-30 ms of CPU per storescu association (benchmarks/acse_setup.py).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pynetdicom.presentation import AllStoragePresentationContexts

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
from pacsguard.dicom.acse_accept import (
    AssociationRequest,
    SupportedContext,
    decode_associate_rq,
    encode_associate_ac,
    encode_associate_rj,
    negotiate,
)

#: A-ASSOCIATE-RJ rejected-transient, presentation-layer, local-limit-exceeded (PS3.8 9.3.4).
ASSOCIATION_LIMIT: Final = (2, 3, 2)

_SYNTAXES: Final = tuple(str(ts) for ts in TRANSFER_SYNTAXES)
_QUERY_RETRIEVE_SYNTAXES: Final = tuple(str(ts) for ts in QUERY_RETRIEVE_TRANSFER_SYNTAXES)
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


def decode_request(data: bytes) -> AssociationRequest:
    """An A-ASSOCIATE-RQ PDU as a plain value; MalformedPdu on bad bytes."""
    return decode_associate_rq(data)


def peer_facts(
    rq: AssociationRequest, address: str, port: int, ssl_object: ssl.SSLObject | None
) -> PeerFacts:
    """What the transport and the request say about the peer, for the gate."""
    cert = peer_cert_facts(ssl_object) if ssl_object is not None else None
    sha, subject = cert if cert is not None else (None, None)
    identity = None
    item = rq.user_identity
    if item is not None:
        identity = UserIdentity(
            identity_type=item.identity_type,
            primary=item.primary,
            secondary=item.secondary,
            positive_response_requested=item.positive_response_requested,
        )
    return PeerFacts(
        address=address,
        port=port,
        calling_ae=rq.calling_ae,
        called_ae=rq.called_ae,
        tls=ssl_object is not None,
        client_cert_sha256=sha,
        client_cert_subject=subject,
        user_identity=identity,
    )


@lru_cache(maxsize=8)
def encode_reject(result: int, source: int, reason: int) -> bytes:
    return encode_associate_rj(result, source, reason)


def _supported(principal: Principal) -> dict[str, SupportedContext]:
    """The contexts the archive supports, filtered for what this principal may use."""
    return _supported_with(principal.permissions)


@lru_cache(maxsize=64)
def _supported_with(permissions: frozenset[Action]) -> dict[str, SupportedContext]:
    """Built once per set of permissions (negotiation only reads them)."""
    holder = Principal("", "", AuthMethod.LAB, None, permissions)
    return {
        abstract: cx
        for abstract, cx in _all_contexts().items()
        if context_allowed(holder, abstract)
    }


@lru_cache(maxsize=1)
def _all_contexts() -> dict[str, SupportedContext]:
    """Verification, every storage SOP class in both roles (C-GET delivers over the same
    association in the SCP role), and query/retrieve in Little Endian only."""
    contexts = {uids.VERIFICATION: SupportedContext(uids.VERIFICATION, _SYNTAXES)}
    for cx in AllStoragePresentationContexts:
        abstract = str(cx.abstract_syntax)
        contexts[abstract] = SupportedContext(abstract, _SYNTAXES, True, True)
    for abstract in sorted(_QUERY_RETRIEVE):
        contexts[abstract] = SupportedContext(abstract, _QUERY_RETRIEVE_SYNTAXES)
    return contexts


def _identity_response(rq: AssociationRequest) -> bytes | None:
    """The gate verified the identity already: a positive response only when requested, and
    (as pynetdicom's ACSE does) only for Kerberos, SAML and JWT identities (types 3, 4, 5)."""
    item = rq.user_identity
    if item is None or not item.positive_response_requested:
        return None
    if item.identity_type not in (3, 4, 5):
        return None
    return b""


def accept(rq: AssociationRequest, principal: Principal, max_pdu: int) -> Accepted:
    """Negotiate contexts and roles for an accepted principal; the A-ASSOCIATE-AC to send."""
    results, role_replies = negotiate(rq.contexts, _supported(principal), rq.roles)
    pdu = encode_associate_ac(rq, results, role_replies, max_pdu, _identity_response(rq))
    contexts = {
        cx.context_id: AcceptedContext(
            cx.context_id, cx.abstract_syntax, cx.transfer_syntax, acceptor_is_scu=cx.as_scu
        )
        for cx in results
        if cx.result == 0x00
    }
    return Accepted(pdu, contexts, rq.max_pdu or 0)
