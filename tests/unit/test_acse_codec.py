"""Our association PDU codec (`pacsguard.dicom.acse`) against pynetdicom's PDU classes as oracle.

Requests must be byte-identical to what pynetdicom encodes from the same primitive; answers that
pynetdicom encodes must read back with the same facts pynetdicom itself decodes from them; and no
input, however broken, may raise anything but MalformedPdu or PeerClosed.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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

from pacsguard.dicom import acse, uids
from pacsguard.dicom.acse import (
    AssociationAccepted,
    AssociationRejected,
    ContextResult,
    ProposedContext,
)
from pacsguard.errors import MalformedPdu, PeerClosed

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

uid_strings = (
    st.lists(st.integers(0, 999_999), min_size=1, max_size=12)
    .map(lambda parts: "1." + ".".join(map(str, parts)))
    .filter(lambda u: len(u) <= 64)
)
ae_titles = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
                    min_size=1, max_size=16)  # fmt: skip
version_names = ae_titles  # pynetdicom refuses backslashes and controls in both
proposals = st.lists(
    st.tuples(uid_strings, st.lists(uid_strings, min_size=1, max_size=3)), min_size=1, max_size=8
)


def pynetdicom_rq(
    calling: str, called: str, contexts: tuple[ProposedContext, ...], max_pdu: int
) -> bytes:
    """What the scanner sent before it had its own codec (pacsguard.dicom.ul, until issue 11)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
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


def pynetdicom_facts(data: bytes, proposed: tuple[ProposedContext, ...]) -> AssociationAccepted:
    """What pynetdicom reads from an A-ASSOCIATE-AC (the scanner's reader until issue 11)."""
    ac = A_ASSOCIATE_AC()
    ac.decode(data)
    by_id = {p.context_id: p.abstract_syntax for p in proposed}
    contexts = []
    for item in ac.presentation_context:
        cid = item.context_id
        if cid is None or cid not in by_id:
            continue
        syntax = item.transfer_syntax
        contexts.append(
            ContextResult(cid, by_id[cid], int(item.result_reason or 0),
                          str(syntax) if syntax else None)
        )  # fmt: skip
    info = ac.user_information
    name = info.implementation_version_name if info is not None else None
    return AssociationAccepted(
        contexts=tuple(contexts),
        max_pdu=info.maximum_length if info is not None else None,
        implementation_class_uid=(
            str(info.implementation_class_uid)
            if info is not None and info.implementation_class_uid
            else None
        ),
        implementation_version_name=str(name) if name else None,
    )


@FAST
@given(ae_titles, ae_titles, proposals, st.integers(0, 0xFFFFFFFF))
def test_requests_are_byte_identical_to_pynetdicoms(
    calling: str, called: str, proposed: list[tuple[str, list[str]]], max_pdu: int
) -> None:
    contexts = tuple(ProposedContext(2 * i + 1, a, tuple(t)) for i, (a, t) in enumerate(proposed))
    ours = acse.encode_associate_rq(calling, called, contexts, max_pdu)
    assert ours == pynetdicom_rq(calling, called, contexts, max_pdu)
    rq = A_ASSOCIATE_RQ()
    rq.decode(ours)
    assert (rq.calling_ae_title, rq.called_ae_title) == (calling, called)


accept_answers = st.lists(st.tuples(st.integers(0, 4), uid_strings), min_size=0, max_size=8)


@FAST
@given(
    accept_answers,
    st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)),
    st.one_of(st.none(), uid_strings),
    st.one_of(st.none(), version_names),
    st.lists(st.integers(1, 255).filter(lambda n: n % 2 == 1), max_size=3),
)
def test_answers_pynetdicom_encodes_read_the_same(
    results: list[tuple[int, str]],
    max_pdu: int | None,
    impl_uid: str | None,
    impl_name: str | None,
    unproposed: list[int],
) -> None:
    proposed = tuple(ProposedContext(2 * i + 1, f"1.2.3.{i}") for i in range(len(results)))
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = "PACSGUARD"
    primitive.called_ae_title = "ANY-SCP"
    primitive.result = 0
    info: list[Any] = []
    if max_pdu is not None:
        item = MaximumLengthNotification()
        item.maximum_length_received = max_pdu
        info.append(item)
    if impl_uid is not None:
        uid_item = ImplementationClassUIDNotification()
        uid_item.implementation_class_uid = impl_uid
        info.append(uid_item)
    if impl_name is not None:
        name_item = ImplementationVersionNameNotification()
        name_item.implementation_version_name = impl_name
        info.append(name_item)
    primitive.user_information = info
    pcs = []
    ids = [p.context_id for p in proposed] + [
        u for u in unproposed if u > 2 * len(results)
    ]  # answers for contexts never proposed are dropped
    for n, cid in enumerate(ids):
        result, syntax = results[n] if n < len(results) else (0, "1.2.840.10008.1.2")
        pc = PresentationContext()
        pc.context_id = cid
        pc.result = result
        pc.transfer_syntax = [syntax]
        pcs.append(pc)
    primitive.presentation_context_definition_results_list = pcs
    data = bytes(A_ASSOCIATE_AC(primitive).encode())
    ours = acse.decode_associate_answer(acse.ASSOCIATE_AC, data, proposed)
    assert isinstance(ours, AssociationAccepted)
    expected = pynetdicom_facts(data, proposed)
    assert ours.contexts == expected.contexts
    assert ours.max_pdu == expected.max_pdu
    assert ours.implementation_class_uid == expected.implementation_class_uid
    assert ours.implementation_version_name == expected.implementation_version_name


@FAST
@given(st.integers(1, 2), st.integers(1, 3), st.sampled_from([1, 2, 3, 7]))
def test_rejections_read_as_pynetdicom_encodes_them(result: int, source: int, reason: int) -> None:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, reason
    data = bytes(A_ASSOCIATE_RJ(primitive).encode())
    answer = acse.decode_associate_answer(acse.ASSOCIATE_RJ, data, ())
    assert answer == AssociationRejected(result, source, reason)


def test_release_and_abort_are_pynetdicoms_bytes() -> None:
    assert bytes(A_RELEASE_RQ(A_RELEASE()).encode()) == acse.RELEASE_RQ_BYTES
    assert bytes(A_RELEASE_RP(A_RELEASE()).encode()) == acse.RELEASE_RP_BYTES
    for source, reason in ((0, 0), (2, 0), (2, 6)):
        primitive = A_ABORT()
        primitive.abort_source = source
        pdu = A_ABORT_RQ(primitive)
        pdu.reason_diagnostic = reason
        assert acse.encode_abort(source, reason) == bytes(pdu.encode())


def test_an_abort_in_answer_is_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        acse.decode_associate_answer(acse.ABORT, acse.encode_abort(2, 0), ())


def _framed(body: bytes, pdu_type: int = acse.ASSOCIATE_AC) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


@FAST
@given(st.binary(max_size=400), st.sampled_from([acse.ASSOCIATE_AC, acse.ASSOCIATE_RJ, 0x04]))
def test_garbage_is_a_protocol_error_never_a_crash(body: bytes, pdu_type: int) -> None:
    proposed = (ProposedContext(1, uids.VERIFICATION),)
    try:
        answer = acse.decode_associate_answer(pdu_type, _framed(body, pdu_type), proposed)
    except (MalformedPdu, PeerClosed):
        return
    assert isinstance(answer, AssociationAccepted | AssociationRejected)


@FAST
@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_cut_or_corrupted_answers_are_protocol_errors(cut: int, noise: bytes) -> None:
    """Real answers, truncated or with bytes overwritten: read or refused, never a crash."""
    proposed = (ProposedContext(1, uids.VERIFICATION),)
    data = bytearray(
        acse.encode_associate_rq("PACSGUARD", "ANY-SCP", proposed, 16384)
    )  # a PDU with every kind of item, read as an answer
    data[0] = acse.ASSOCIATE_AC
    data = data[: max(6, len(data) - cut)]
    at = cut % len(data)
    data[at : at + len(noise)] = noise
    body = bytes(data[6:])
    with contextlib.suppress(MalformedPdu, PeerClosed):
        acse.decode_associate_answer(acse.ASSOCIATE_AC, _framed(body), proposed)
