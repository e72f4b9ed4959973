"""Association negotiation for simulated hosts: A-ASSOCIATE-RQ in, -AC or -RJ bytes out.

Pure: decides from the host's profile and the request alone. pynetdicom's PDU classes and
primitives do all encoding; the acceptor only chooses results (PS3.8 9.3.3, 9.3.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from pacsguard.dicom import uids
from pacsguard.lab.profiles import (
    PATIENT_ROOT_FIND,
    STORAGE,
    STUDY_ROOT_FIND,
    VERIFICATION,
    HostSpec,
    Stack,
    services_offered,
)

#: Presentation context results (PS3.8 Table 9-18).
CONTEXT_ACCEPTED: Final = 0
CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED: Final = 3
CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED: Final = 4

#: A-ASSOCIATE-RJ reasons from the UL service-user (source 1), PS3.8 Table 9-21.
REJECT_NO_REASON: Final = 1
REJECT_APPLICATION_CONTEXT: Final = 2
REJECT_CALLING_AE: Final = 3
REJECT_CALLED_AE: Final = 7

#: Storage SOP classes all live under this root (PS3.4 Annex B.5).
_STORAGE_ROOT: Final = "1.2.840.10008.5.1.4.1.1."
_IMPLICIT: Final = str(uids.IMPLICIT_VR_LITTLE_ENDIAN)
_PREFERRED_TRANSFER_SYNTAXES: Final = (str(uids.EXPLICIT_VR_LITTLE_ENDIAN), _IMPLICIT)


def service_of(abstract_syntax: str) -> str | None:
    """The service name an abstract syntax belongs to, or None for anything we do not serve."""
    if abstract_syntax == uids.VERIFICATION:
        return VERIFICATION
    if abstract_syntax == uids.STUDY_ROOT_FIND:
        return STUDY_ROOT_FIND
    if abstract_syntax == uids.PATIENT_ROOT_FIND:
        return PATIENT_ROOT_FIND
    if abstract_syntax.startswith(_STORAGE_ROOT):
        return STORAGE
    return None


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context the host accepted, as later P-DATA refers to it."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    service: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """The host accepts: the A-ASSOCIATE-AC to send and the contexts it opens."""

    pdu: bytes
    contexts: dict[int, AcceptedContext]
    #: Largest PDU the requestor will accept from us (0: no limit announced).
    peer_max_pdu: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The host rejects: the A-ASSOCIATE-RJ to send."""

    pdu: bytes
    reason: int


@lru_cache(maxsize=8)
def encode_reject(reason: int, result: int = 1, source: int = 1) -> bytes:
    """A-ASSOCIATE-RJ; result 1 permanent, source 1 UL service-user."""
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    return bytes(A_ASSOCIATE_RJ(primitive).encode())


def _choose(offered: tuple[str, ...], abstract_syntax: str, proposed: list[str]) -> tuple[int, str]:
    """(result, transfer syntax) for one proposed context; a rejected one names Implicit VR LE."""
    service = service_of(abstract_syntax)
    if service is not None and service in offered:
        for syntax in _PREFERRED_TRANSFER_SYNTAXES:
            if syntax in proposed:
                return CONTEXT_ACCEPTED, syntax
        return CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED, _IMPLICIT
    return CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, _IMPLICIT


def encode_accept(
    stack: Stack,
    called_ae: str,
    calling_ae: str,
    results: list[tuple[int, int, str]],
) -> bytes:
    """A-ASSOCIATE-AC carrying the stack's max PDU, implementation UID and version name.

    `results` holds (context id, result, transfer syntax) for every proposed context.
    """
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.called_ae_title = called_ae
    primitive.calling_ae_title = calling_ae
    primitive.result = 0
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = stack.max_pdu
    items: list[
        MaximumLengthNotification
        | ImplementationClassUIDNotification
        | ImplementationVersionNameNotification
    ] = [max_length]
    if stack.implementation_class_uid:  # a dicompot-like stack sends neither (non-conformant)
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = stack.implementation_class_uid
        items.append(impl_uid)
    if stack.implementation_version_name:
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = stack.implementation_version_name
        items.append(impl_name)
    primitive.user_information = list(items)
    contexts = []
    for context_id, result, transfer_syntax in results:
        pc = PresentationContext()
        pc.context_id = context_id
        pc.result = result
        pc.transfer_syntax = [transfer_syntax]
        contexts.append(pc)
    primitive.presentation_context_definition_results_list = contexts
    return bytes(A_ASSOCIATE_AC(primitive).encode())


def negotiate(spec: HostSpec, rq: A_ASSOCIATE_RQ) -> Accepted | Rejected:
    """Answer a decoded A-ASSOCIATE-RQ as the host's profile dictates (PS3.8 9.3.3, 9.3.4)."""
    if rq.application_context_name != uids.APPLICATION_CONTEXT:
        return Rejected(encode_reject(REJECT_APPLICATION_CONTEXT), REJECT_APPLICATION_CONTEXT)
    called = (rq.called_ae_title or "").strip()
    calling = (rq.calling_ae_title or "").strip()
    if spec.profile.checks_called_ae and called != spec.ae_title:
        return Rejected(encode_reject(REJECT_CALLED_AE), REJECT_CALLED_AE)
    if spec.profile.checks_calling_ae and calling not in spec.calling_allowlist:
        return Rejected(encode_reject(REJECT_CALLING_AE), REJECT_CALLING_AE)
    offered = services_offered(spec.profile)
    results: list[tuple[int, int, str]] = []
    contexts: dict[int, AcceptedContext] = {}
    for item in rq.presentation_context:
        context_id = item.context_id
        if context_id is None or context_id % 2 == 0 or any(r[0] == context_id for r in results):
            continue  # PS3.8 9.3.2.2: ids are odd and unique; skip what we cannot answer
        abstract_syntax = str(item.abstract_syntax or "")
        proposed = [str(ts) for ts in item.transfer_syntax if ts]
        result, syntax = _choose(offered, abstract_syntax, proposed)
        results.append((context_id, result, syntax))
        service = service_of(abstract_syntax)
        if result == CONTEXT_ACCEPTED and service is not None:
            contexts[context_id] = AcceptedContext(context_id, abstract_syntax, syntax, service)
    if not results:
        return Rejected(encode_reject(REJECT_NO_REASON), REJECT_NO_REASON)
    info = rq.user_information
    peer_max = int(info.maximum_length or 0) if info is not None else 0
    return Accepted(encode_accept(spec.stack, called, calling, results), contexts, peer_max)
