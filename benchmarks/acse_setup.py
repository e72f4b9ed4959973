"""`python -m benchmarks.acse_setup`: CPU time of association set-up on the archive's front end.

One association's set-up work on the event loop: decode a storescu-like A-ASSOCIATE-RQ (120
storage presentation contexts with 4 transfer syntaxes each, a user identity asking for a
positive response, SCP/SCU role selection items), negotiate presentation contexts and roles
for a principal with every permission, encode the A-ASSOCIATE-AC. Twice, in interleaved pairs:
the archive's path today (`aio_negotiation.decode_request` + `accept`) and pynetdicom's, the
path until issue 9 (`pynetdicom_setup` below, kept as baseline and as the oracle of
`tests/unit/test_acse_accept.py`). Per pair, each side runs `--rounds` set-ups; CPU time is
`time.process_time`. Results in benchmarks/results/acse-setup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
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

from pacsguard.archive.dimse import aio_negotiation
from pacsguard.archive.dimse.contexts import (
    QUERY_RETRIEVE_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
    context_allowed,
)
from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.dicom import uids
from pacsguard.dicom.acse_accept import (
    AssociationRequest,
    RequestedContext,
    RequestedIdentity,
    RoleSelection,
)
from pacsguard.errors import MalformedPdu

RESULTS = Path(__file__).parent / "results"
MAX_PDU = 262144
PRINCIPAL = Principal(
    "STORESCU", "127.0.0.1", AuthMethod.USER_PASSWORD, "tester", frozenset(Action)
)
#: What dcmtk's storescu proposes per SOP class with `+xa`-like options, shortened.
STORESCU_SYNTAXES = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.70",
)


def storescu_like_request(contexts: int = 120) -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom encodes it: `contexts` storage contexts, a username and
    passcode identity asking for a positive response, role selection for the first four."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "PACSGUARD"
    abstracts = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][:contexts]
    primitive.presentation_context_definition_list = [
        build_context(abstract, list(STORESCU_SYNTAXES)) for abstract in abstracts
    ]
    for i, context in enumerate(primitive.presentation_context_definition_list):
        context.context_id = 2 * i + 1
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.8"
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = "OFFIS_DCMTK_368"
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.positive_response_requested = True
    identity.primary_field = b"tester"
    identity.secondary_field = b"not-a-secret"
    roles = []
    for abstract in abstracts[:4]:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = abstract
        role.scu_role, role.scp_role = True, False
        roles.append(role)
    primitive.user_information = [max_length, impl_uid, impl_name, identity, *roles]
    return bytes(A_ASSOCIATE_RQ(primitive).encode())


# -- pynetdicom's path (the archive's until issue 9): baseline and oracle ---------------------


def pynetdicom_decode(data: bytes) -> A_ASSOCIATE:
    """pynetdicom's A-ASSOCIATE primitive of a request; MalformedPdu where the archive refused."""
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(data)
        primitive = pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises assorted errors on bad bytes
        raise MalformedPdu(f"undecodable A-ASSOCIATE-RQ: {exc.__class__.__name__}") from None
    for context in primitive.presentation_context_definition_list:
        if context.context_id is None or not context.abstract_syntax:
            raise MalformedPdu("A-ASSOCIATE-RQ presentation context without abstract syntax")
        if not context.transfer_syntax:
            raise MalformedPdu("A-ASSOCIATE-RQ presentation context without transfer syntax")
    return primitive


def pynetdicom_facts(rq: A_ASSOCIATE) -> AssociationRequest:
    """What pynetdicom read from a request, as our decoder's value (the oracle's side)."""
    info = rq.user_information
    identity = next((i for i in info if isinstance(i, UserIdentityNegotiation)), None)
    window = next((i for i in info if isinstance(i, AsynchronousOperationsWindowNegotiation)), None)
    max_pdu = None
    for item in info:
        if isinstance(item, MaximumLengthNotification):
            max_pdu = item.maximum_length_received
    application_context = rq.application_context_name
    return AssociationRequest(
        called_ae=str(rq.called_ae_title),
        calling_ae=str(rq.calling_ae_title),
        application_context=None if application_context is None else str(application_context),
        contexts=tuple(
            RequestedContext(
                int(cx.context_id or 0),
                str(cx.abstract_syntax),
                tuple(str(ts) for ts in cx.transfer_syntax),
            )
            for cx in rq.presentation_context_definition_list
        ),
        max_pdu=max_pdu,
        implementation_class_uid=next(
            (
                str(i.implementation_class_uid or "")
                for i in info
                if isinstance(i, ImplementationClassUIDNotification)
            ),
            None,
        )
        or None,
        implementation_version_name=next(
            (
                str(i.implementation_version_name or "")
                for i in info
                if isinstance(i, ImplementationVersionNameNotification)
            ),
            None,
        )
        or None,
        user_identity=None
        if identity is None
        else RequestedIdentity(
            int(identity.user_identity_type or 0),
            bool(identity.positive_response_requested),
            bytes(identity.primary_field or b""),
            bytes(identity.secondary_field or b""),
        ),
        roles=tuple(
            RoleSelection(str(i.sop_class_uid), bool(i.scu_role), bool(i.scp_role))
            for i in info
            if isinstance(i, SCP_SCU_RoleSelectionNegotiation)
        ),
        async_ops_window=None
        if window is None
        else (
            int(window.maximum_number_operations_invoked),
            int(window.maximum_number_operations_performed),
        ),
    )


@lru_cache(maxsize=1)
def _pynetdicom_contexts() -> tuple[PresentationContext, ...]:
    syntaxes: list[str | UID] = list(TRANSFER_SYNTAXES)
    contexts = [build_context(uids.VERIFICATION, syntaxes)]
    for cx in AllStoragePresentationContexts:
        storage = build_context(str(cx.abstract_syntax), syntaxes)
        storage.scu_role = True
        storage.scp_role = True
        contexts.append(storage)
    query_retrieve: list[str | UID] = list(QUERY_RETRIEVE_TRANSFER_SYNTAXES)
    for abstract in sorted(aio_negotiation._QUERY_RETRIEVE):
        contexts.append(build_context(abstract, query_retrieve))
    return tuple(contexts)


@lru_cache(maxsize=64)
def _pynetdicom_supported(permissions: frozenset[Action]) -> tuple[PresentationContext, ...]:
    holder = Principal("", "", AuthMethod.LAB, None, permissions)
    return tuple(
        cx for cx in _pynetdicom_contexts() if context_allowed(holder, str(cx.abstract_syntax))
    )


def pynetdicom_accept(
    rq: A_ASSOCIATE, principal: Principal, max_pdu: int
) -> tuple[bytes, dict[int, aio_negotiation.AcceptedContext], int]:
    """The A-ASSOCIATE-AC, accepted contexts and the peer's maximum PDU, by pynetdicom."""
    roles = {
        UID(str(item.sop_class_uid)): (item.scu_role, item.scp_role)
        for item in rq.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, role_items = negotiate_as_acceptor(
        rq.presentation_context_definition_list,
        list(_pynetdicom_supported(principal.permissions)),
        roles or None,
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
    identity = next(
        (i for i in rq.user_information if isinstance(i, UserIdentityNegotiation)), None
    )
    if (
        identity is not None
        and identity.positive_response_requested
        and identity.user_identity_type in (3, 4, 5)
    ):
        response = UserIdentityNegotiation()
        response.server_response = b""
        info.append(response)
    primitive.user_information = info  # type: ignore[assignment]
    contexts = {
        int(cx.context_id): aio_negotiation.AcceptedContext(
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
    return bytes(A_ASSOCIATE_AC(primitive).encode()), contexts, peer_max


def pynetdicom_setup(data: bytes) -> bytes:
    return pynetdicom_accept(pynetdicom_decode(data), PRINCIPAL, MAX_PDU)[0]


def pacsguard_setup(data: bytes) -> bytes:
    request = aio_negotiation.decode_request(data)
    return aio_negotiation.accept(request, PRINCIPAL, MAX_PDU).pdu


# -- measurement ------------------------------------------------------------------------------


def _cpu_ms(setup: Callable[[bytes], bytes], data: bytes, rounds: int) -> float:
    """Median CPU milliseconds of one set-up over `rounds`."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        setup(data)
        samples.append(time.process_time() - started)
    return statistics.median(samples) * 1000


def run(pairs: int, rounds: int, contexts: int) -> dict[str, Any]:
    data = storescu_like_request(contexts)
    if pacsguard_setup(data) != pynetdicom_setup(data):
        raise SystemExit("the two paths answer with different A-ASSOCIATE-AC bytes")
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for _ in range(pairs):
        before = _cpu_ms(pynetdicom_setup, data, rounds)
        after = _cpu_ms(pacsguard_setup, data, rounds)
        rows.append({"pynetdicom_ms": before, "pacsguard_ms": after, "ratio": after / before})
    ratios = [r["ratio"] for r in rows]
    before_ms = [r["pynetdicom_ms"] for r in rows]
    after_ms = [r["pacsguard_ms"] for r in rows]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "request_bytes": len(data),
        "contexts": contexts,
        "pairs": pairs,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "pynetdicom_ms": {
            "median": statistics.median(before_ms),
            "min": min(before_ms),
            "max": max(before_ms),
        },
        "pacsguard_ms": {
            "median": statistics.median(after_ms),
            "min": min(after_ms),
            "max": max(after_ms),
        },
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    before, after, ratio = result["pynetdicom_ms"], result["pacsguard_ms"], result["ratio"]
    return "\n".join(
        [
            "# Association set-up CPU (decode A-ASSOCIATE-RQ, negotiate, encode -AC)",
            "",
            f"{result['date']}; storescu-like request of {result['contexts']} contexts "
            f"({result['request_bytes']} bytes); {result['pairs']} interleaved pairs of "
            f"{result['rounds']} set-ups each (median per side); load average "
            f"{result['load_before']} before, {result['load_after']} after.",
            "",
            "| path | CPU ms per association, median | range over pairs |",
            "|---|---|---|",
            f"| pynetdicom PDU classes + negotiate_as_acceptor | {before['median']:.3f} | "
            f"{before['min']:.3f}-{before['max']:.3f} |",
            f"| pacsguard.dicom.acse_accept | {after['median']:.3f} | "
            f"{after['min']:.3f}-{after['max']:.3f} |",
            "",
            f"Ratio (ours / pynetdicom), median of per-pair ratios: {ratio['median']:.3f} "
            f"(range {ratio['min']:.3f}-{ratio['max']:.3f}).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--contexts", type=int, default=120)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    result = run(args.pairs, args.rounds, args.contexts)
    text = markdown(result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "acse-setup.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "acse-setup.md").write_text(text)


if __name__ == "__main__":
    main()
