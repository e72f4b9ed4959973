"""Property tests (Hypothesis): our encoders and decoders against pynetdicom's and pydicom's on
generated, well-formed values, and every encoding we generate passes its fuzz harness too.
Bounded to a few seconds each (the coverage-guided search for malformed input is `./dev fuzz`)."""

from __future__ import annotations

from io import BytesIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA, UserIdentityNegotiation

from pacsguard.archive.dimse.aio_negotiation import decode_request, peer_facts
from pacsguard.archive.service import INDEXED_KEYWORDS
from pacsguard.dicom.command import ELEMENTS, decode_command, encode_command
from pacsguard.dicom.dimse import presentation_data_values
from pacsguard.dicom.header import file_meta_end, read_header
from pacsguard.dicom.stream import encode_file_meta, skip_file_meta
from pacsguard.dicom.ul import ProposedContext, encode_associate_rq
from tests.fuzz.harness import judge, load

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

uids = st.lists(st.integers(0, 999_999), min_size=1, max_size=8).map(
    lambda parts: "1." + ".".join(map(str, parts))
)
ae_titles = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
                    min_size=1, max_size=16)  # fmt: skip
plain_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"), max_size=64
).map(str.strip)
tags = st.integers(min_value=0, max_value=0xFFFFFFFF)


def _value(vr: str) -> st.SearchStrategy[object]:
    return {
        "US": st.integers(0, 0xFFFF),
        "UL": st.integers(0, 0xFFFFFFFF),
        "UI": uids,
        "AE": ae_titles,
        "LO": plain_text.filter(bool),
        "AT": st.lists(tags, min_size=1, max_size=4).map(tuple),
    }[vr]


command_sets = st.fixed_dictionaries(
    {"CommandField": st.integers(0, 0xFFFF)},
    optional={
        keyword: _value(vr)
        for keyword, (_tag, vr) in ELEMENTS.items()
        if keyword not in ("CommandGroupLength", "CommandField")
    },
)


@FAST
@given(command_sets)
def test_command_sets_encode_as_pynetdicom_and_decode_back(values: dict[str, object]) -> None:
    ours = encode_command(values)  # type: ignore[arg-type]
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, list(value) if isinstance(value, tuple) else value)
    reference = encode(ds, True, True)
    assert reference is not None
    assert ours[12:] == reference
    assert int.from_bytes(ours[8:12], "little") == len(reference)
    decoded = dict(decode_command(ours))
    assert decoded.pop("CommandGroupLength") == len(reference)
    assert decoded == values
    judge(load("command"), ours)


pdvs = st.lists(
    st.tuples(st.integers(1, 255), st.integers(0, 3), st.binary(min_size=1, max_size=300)),
    min_size=1,
    max_size=5,
)


@FAST
@given(pdvs)
def test_pdv_items_read_as_pynetdicom_writes_them(items: list[tuple[int, int, bytes]]) -> None:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[c, bytes([h]) + f] for c, h, f in items]
    pdu = bytes(P_DATA_TF(primitive).encode())
    assert [(c, h, bytes(f)) for c, h, f in presentation_data_values(pdu)] == items
    judge(load("pdata"), pdu)


contexts = st.lists(
    st.tuples(uids, st.lists(uids, min_size=1, max_size=3, unique=True)),
    min_size=1,
    max_size=8,
)


@FAST
@given(ae_titles, ae_titles, contexts, st.integers(0, 1 << 20))
def test_associate_rq_round_trips_through_pynetdicom(
    calling: str, called: str, proposed: list[tuple[str, list[str]]], max_pdu: int
) -> None:
    ours = encode_associate_rq(
        calling,
        called,
        tuple(ProposedContext(2 * i + 1, a, tuple(t)) for i, (a, t) in enumerate(proposed)),
        max_pdu,
    )
    rq = decode_request(ours)
    assert [(c.context_id, c.abstract_syntax, list(c.transfer_syntaxes)) for c in rq.contexts] == [
        (2 * i + 1, a, t) for i, (a, t) in enumerate(proposed)
    ]
    facts = peer_facts(rq, "127.0.0.1", 104, None)
    assert (facts.calling_ae, facts.called_ae) == (calling, called)


@FAST
@given(ae_titles, st.integers(1, 5), st.binary(max_size=200), st.binary(max_size=200))
def test_user_identity_reaches_the_gate_as_sent(
    calling: str, kind: int, primary: bytes, secondary: bytes
) -> None:
    rq = A_ASSOCIATE_RQ()
    rq.decode(encode_associate_rq(calling, "PACSGUARD", (ProposedContext(1, "1.2.3"),), 0))
    primitive: A_ASSOCIATE = rq.to_primitive()
    identity = UserIdentityNegotiation()
    identity.user_identity_type = kind
    identity.primary_field = primary or b"x"
    identity.secondary_field = (secondary or b"y") if kind == 2 else b""
    primitive.user_information = [*primitive.user_information, identity]
    facts = peer_facts(decode_request(bytes(A_ASSOCIATE_RQ(primitive).encode())), "::1", 1, None)
    assert facts.user_identity is not None
    assert facts.user_identity.identity_type == kind
    assert facts.user_identity.primary == (primary or b"x")
    assert facts.user_identity.secondary == ((secondary or b"y") if kind == 2 else b"")


versions = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
                   min_size=1, max_size=16)  # fmt: skip


@FAST
@given(uids, uids, uids, uids, versions)
def test_file_meta_is_pydicoms_and_reads_back(
    sop_class: str, instance: str, syntax: str, implementation: str, version: str
) -> None:
    ours = encode_file_meta(
        sop_class_uid=sop_class,
        sop_instance_uid=instance,
        transfer_syntax=syntax,
        implementation_uid=implementation,
        implementation_version=version,
    )
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(implementation)
    meta.ImplementationVersionName = version
    reference = BytesIO(b"\x00" * 128 + b"DICM")
    reference.seek(0, 2)
    write_file_meta_info(reference, meta)
    assert ours == reference.getvalue()
    assert file_meta_end(ours) == len(ours)
    stream = BytesIO(ours + b"rest")
    assert skip_file_meta(stream) == syntax
    assert stream.read() == b"rest"


names = st.text(st.characters(min_codepoint=0x41, max_codepoint=0x5A), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    uids,
    names,
    names,
    plain_text,
    st.lists(st.tuples(uids, st.booleans()), max_size=3),
    st.booleans(),
)
def test_header_walker_reads_what_pydicom_reads(
    syntax: str,
    instance: str,
    family: str,
    patient_id: str,
    description: str,
    items: list[tuple[str, bool]],
    undefined: bool,
) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = instance + ".1"
    ds.SeriesInstanceUID = instance + ".2"
    ds.PatientName = f"{family}^SYNTHETIC"
    ds.PatientID = patient_id
    ds.StudyDescription = description
    references = []
    for uid, item_undefined in items:
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        item.is_undefined_length_sequence_item = item_undefined
        references.append(item)
    ds.ReferencedStudySequence = Sequence(references)
    ds["ReferencedStudySequence"].is_undefined_length = undefined
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = instance
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    values = read_header(out.getvalue(), INDEXED_KEYWORDS)
    assert values is not None
    assert values["PatientID"] == patient_id and values["StudyDescription"] == description
    assert values["SOPInstanceUID"] == instance and values["TransferSyntaxUID"] == syntax
    judge(load("header"), out.getvalue())  # and pydicom agrees on every indexed value
