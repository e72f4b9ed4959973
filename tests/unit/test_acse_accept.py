"""The acceptor's association codec and negotiation (`pacsguard.dicom.acse_accept`, wired in
`archive.dimse.aio_negotiation`) against pynetdicom as oracle: for requests pynetdicom encodes,
our decoder reads the same facts as pynetdicom's, the negotiation accepts the same contexts
in the same roles, and the A-ASSOCIATE-AC is byte for byte the one pynetdicom encodes (the
archive's path until issue 9, kept in `benchmarks.acse_setup`). Broken input raises only
MalformedPdu.
"""

from __future__ import annotations

import struct

import pytest
from benchmarks.acse_setup import (
    pynetdicom_accept,
    pynetdicom_decode,
    pynetdicom_facts,
    storescu_like_request,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
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
    negotiate_as_acceptor,
)

from pacsguard.archive.dimse.aio_negotiation import accept, decode_request, encode_reject
from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.dicom import uids
from pacsguard.dicom.acse_accept import (
    RequestedContext,
    RoleSelection,
    SupportedContext,
    decode_associate_rq,
    negotiate,
)
from pacsguard.errors import MalformedPdu

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STORAGE = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
KNOWN_ABSTRACTS = [
    uids.VERIFICATION,
    uids.STUDY_ROOT_FIND,
    uids.PATIENT_ROOT_MOVE,
    uids.STUDY_ROOT_GET,
    *STORAGE[:6],
]
KNOWN_SYNTAXES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
]
PERMISSIONS = [
    frozenset(Action),
    frozenset({Action.STORE}),
    frozenset({Action.FIND, Action.ECHO}),
    frozenset({Action.GET}),
    frozenset(),
]

random_uids = (
    st.lists(st.integers(0, 999_999), min_size=1, max_size=10)
    .map(lambda parts: "1." + ".".join(map(str, parts)))
    .filter(lambda u: len(u) <= 64)
)
abstracts = st.one_of(st.sampled_from(KNOWN_ABSTRACTS), random_uids)
syntaxes = st.one_of(st.sampled_from(KNOWN_SYNTAXES), random_uids)
ae_titles = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
                    min_size=1, max_size=16)  # fmt: skip
contexts = st.lists(
    st.tuples(
        st.integers(0, 127).map(lambda i: 2 * i + 1),
        abstracts,
        st.lists(syntaxes, min_size=1, max_size=4),
    ),
    min_size=0,
    max_size=12,
)
identities = st.none() | st.tuples(
    st.integers(1, 5), st.booleans(), st.binary(min_size=1, max_size=64), st.binary(max_size=64)
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom encodes it, with optional user information."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = draw(ae_titles)
    primitive.called_ae_title = draw(ae_titles)
    proposed = draw(contexts)
    for context_id, abstract, transfer in proposed:
        pc = PresentationContext()
        pc.context_id = context_id
        pc.abstract_syntax = abstract
        pc.transfer_syntax = transfer  # type: ignore[assignment]
        primitive.presentation_context_definition_list.append(pc)
    info: list[object] = []
    if draw(st.booleans()):
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = draw(st.integers(0, (1 << 32) - 1))
        info.append(max_length)
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = draw(random_uids)
    info.append(impl_uid)
    if draw(st.booleans()):
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = draw(ae_titles)
        info.append(impl_name)
    if draw(st.booleans()):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = draw(st.integers(0, 0xFFFF))
        window.maximum_number_operations_performed = draw(st.integers(0, 0xFFFF))
        info.append(window)
    sop_classes = [a for _, a, _ in proposed] + KNOWN_ABSTRACTS[:5]
    for sop_class in draw(st.lists(st.sampled_from(sop_classes), max_size=4)):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = sop_class
        # pynetdicom refuses to encode (False, False); the table test covers it.
        scu = draw(st.booleans())
        role.scu_role, role.scp_role = scu, draw(st.booleans()) if scu else True
        info.append(role)
    identity = draw(identities)
    if identity is not None:
        kind, positive, primary, secondary = identity
        item = UserIdentityNegotiation()
        item.user_identity_type = kind
        item.positive_response_requested = positive
        item.primary_field = primary
        item.secondary_field = (secondary or b"x") if kind == 2 else secondary
        info.append(item)
    primitive.user_information = draw(st.permutations(info))  # type: ignore[arg-type]
    return bytes(A_ASSOCIATE_RQ(primitive).encode())


def _principal(permissions: frozenset[Action]) -> Principal:
    return Principal("PEER", "127.0.0.1", AuthMethod.LAB, None, permissions)


@FAST
@given(requests())
def test_requests_read_as_pynetdicom_reads_them(data: bytes) -> None:
    assert decode_associate_rq(data) == pynetdicom_facts(pynetdicom_decode(data))


@FAST
@given(requests(), st.sampled_from(PERMISSIONS), st.integers(0, 1 << 20))
def test_negotiation_and_answer_are_pynetdicoms(
    data: bytes, permissions: frozenset[Action], max_pdu: int
) -> None:
    principal = _principal(permissions)
    ours = accept(decode_request(data), principal, max_pdu)
    pdu, contexts, peer_max = pynetdicom_accept(pynetdicom_decode(data), principal, max_pdu)
    assert ours.pdu == pdu
    assert ours.contexts == contexts
    assert ours.peer_max_pdu == peer_max


def test_a_storescu_like_request_is_answered_as_pynetdicom_answers_it() -> None:
    data = storescu_like_request(120)
    request = decode_request(data)
    assert len(request.contexts) == 120
    assert request.user_identity is not None and request.user_identity.identity_type == 2
    assert len(request.roles) == 4
    assert request == pynetdicom_facts(pynetdicom_decode(data))
    for permissions in PERMISSIONS:
        principal = _principal(permissions)
        ours = accept(request, principal, 65536)
        assert ours.pdu == pynetdicom_accept(pynetdicom_decode(data), principal, 65536)[0]
    # Role selection (SCU only, as storescu asks) accepted in the default roles.
    accepted = accept(request, _principal(frozenset(Action)), 65536)
    assert len(accepted.contexts) == 120
    assert not any(cx.acceptor_is_scu for cx in accepted.contexts.values())


ROLES = [None, True, False]


@pytest.mark.parametrize("ours", [(a, b) for a in ROLES for b in ROLES])
@pytest.mark.parametrize(
    "theirs", [None, (True, True), (True, False), (False, True), (False, False)]
)
def test_roles_follow_pynetdicoms_table(
    ours: tuple[bool | None, bool | None], theirs: tuple[bool, bool] | None
) -> None:
    ct, ts = STORAGE[0], "1.2.840.10008.1.2"
    supported = {ct: SupportedContext(ct, (ts,), *ours)}
    roles = [] if theirs is None else [RoleSelection(ct, *theirs)]
    results, replies = negotiate([RequestedContext(1, ct, (ts,))], supported, roles)
    rq, ac = PresentationContext(), PresentationContext()
    rq.context_id, rq.abstract_syntax, rq.transfer_syntax = 1, ct, [ts]
    ac.abstract_syntax, ac.transfer_syntax = ct, [ts]
    ac.scu_role, ac.scp_role = ours
    reference, reference_roles = negotiate_as_acceptor(
        [rq], [ac], None if theirs is None else {UID(ct): theirs}
    )
    (result,) = results
    assert (result.result, result.as_scu, result.as_scp) == (
        reference[0].result,
        bool(reference[0].as_scu),
        bool(reference[0].as_scp),
    )
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in replies] == [
        (str(r.sop_class_uid), r.scu_role, r.scp_role) for r in reference_roles
    ]


def test_nothing_supported_answers_each_proposal_in_order() -> None:
    proposed = [RequestedContext(3, "1.2.3", ("1.2",)), RequestedContext(1, "1.2.4", ("1.5",))]
    results, replies = negotiate(proposed, {})
    assert [(r.context_id, r.result, r.transfer_syntax) for r in results] == [
        (3, 3, "1.2"),
        (1, 3, "1.5"),
    ]
    assert replies == ()


@pytest.mark.parametrize(("result", "source", "reason"), [(1, 1, 7), (2, 3, 2), (1, 2, 2)])
def test_rejections_are_pynetdicoms(result: int, source: int, reason: int) -> None:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, reason
    assert encode_reject(result, source, reason) == bytes(A_ASSOCIATE_RJ(primitive).encode())


def _decodes_or_malformed(data: bytes) -> None:
    try:
        request = decode_associate_rq(data)
    except MalformedPdu:
        return
    accept(request, _principal(frozenset(Action)), 16384)


@FAST
@given(st.binary(max_size=600))
def test_garbage_is_malformed(tail: bytes) -> None:
    data = b"\x01\x00" + struct.pack(">I", 68 + len(tail)) + b"\x00\x01\x00\x00"
    _decodes_or_malformed(data + b"CALLED".ljust(16) + b"CALLING".ljust(16) + bytes(32) + tail)


@FAST
@given(requests(), st.data())
def test_damaged_requests_are_malformed_or_read_as_pynetdicom_reads_them(
    data: bytes, draw: st.DataObject
) -> None:
    damaged = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        position = draw.draw(st.integers(0, len(damaged) - 1))
        damaged[position] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(len(damaged) // 2, len(damaged)))
    damaged = damaged[:cut]
    try:
        request = decode_associate_rq(bytes(damaged))
    except MalformedPdu:
        return
    # Never looser than the path it replaced: what we read, pynetdicom reads the same.
    assert request == pynetdicom_facts(pynetdicom_decode(bytes(damaged)))
