"""Names in several character sets through the wire, pynetdicom on both ends of the test:
C-STORE -> index -> C-FIND, wildcards on non-ASCII names, the declared response character set;
and the transfer syntaxes a query/retrieve context may use.

dcmtk's storescu and findscu against the same archive: tests/interop/test_archive_charsets.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from pacsguard.archive.app import RunningArchive

from .conftest import StartArchive
from .test_serve import client, good_dataset, plain, store

#: Synthetic names; the Japanese one is PS3.5 H.3.1's example, stored as ISO 2022 IR 87.
LATIN1 = "M\u00fcller^J\u00fcrgen"
JAPANESE = "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046"
CHINESE = "Wang^XiaoDong=\u738b^\u5c0f\u6771"
ASCII = "Doe^Jane"
STORED: dict[str, str | list[str] | None] = {
    LATIN1: "ISO_IR 100",
    JAPANESE: ["", "ISO 2022 IR 87"],
    CHINESE: "ISO_IR 192",
    ASCII: None,
}


def named(name: str, charset: str | list[str] | None, patient_id: str) -> Dataset:
    """A synthetic instance of a new patient and study named `name`, encoded in `charset`."""
    ds = good_dataset()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = patient_id
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = "Sch\u00e4del" if charset == "ISO_IR 100" else "Head"
    return ds


@pytest.fixture
def archive(start: StartArchive) -> Iterator[RunningArchive]:
    """An archive holding one study per name of STORED, each indexed as Unicode text."""
    running = start()
    for number, (name, charset) in enumerate(STORED.items()):
        ds = named(name, charset, f"CS{number}")
        assert store(running, ds) == 0x0000
        record = running.index.get(str(ds.SOPInstanceUID))
        assert record is not None and record.patient_name == name
    yield running


def find(
    archive: RunningArchive, charset: str | list[str] | None, pattern: str
) -> tuple[list[Dataset], int]:
    """(pending identifiers, final status) of a STUDY-level C-FIND on PatientName."""
    query = Dataset()
    if charset is not None:
        query.SpecificCharacterSet = charset
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = pattern
    query.StudyDescription = ""
    query.StudyInstanceUID = ""
    endpoint = plain(archive)
    assoc = client().associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    pending = [ds for status, ds in answers if status and status.Status == 0xFF00]
    assert all(ds is not None for ds in pending)
    final = answers[-1][0]
    return pending, int(final.Status) if final else -1


def names(found: list[Dataset]) -> dict[str, object]:
    """Decoded name -> the Specific Character Set its response declared."""
    return {str(ds.PatientName): ds.get("SpecificCharacterSet") for ds in found}


def test_every_name_comes_back_as_stored_in_a_declared_charset(archive: RunningArchive) -> None:
    found, status = find(archive, None, "*")
    assert status == 0x0000
    # No charset in the query: non-ASCII answers in UTF-8, ASCII ones with none declared.
    assert names(found) == {
        LATIN1: "ISO_IR 192",
        JAPANESE: "ISO_IR 192",
        CHINESE: "ISO_IR 192",
        ASCII: None,
    }
    described = {str(ds.PatientName): ds.StudyDescription for ds in found}
    assert described[LATIN1] == "Sch\u00e4del"


@pytest.mark.parametrize(
    ("charset", "pattern", "expected"),
    [
        # The query's charset is echoed when it holds the answer, else UTF-8 is declared.
        ("ISO_IR 100", "M\u00fc*", {LATIN1: "ISO_IR 100"}),
        ("ISO_IR 100", "m?ller^j\u00fcrgen", {LATIN1: "ISO_IR 100"}),  # PN: case-insensitive
        (["", "ISO 2022 IR 87"], "*\u5c71\u7530*", {JAPANESE: ["", "ISO 2022 IR 87"]}),
        (["", "ISO 2022 IR 87"], "*=\u3084\u307e\u3060^*", {JAPANESE: ["", "ISO 2022 IR 87"]}),
        ("ISO_IR 192", "Wang^XiaoDong=?^??", {CHINESE: "ISO_IR 192"}),  # ? = one character
        ("ISO_IR 192", "Wang^XiaoDong=?^?", {}),
        ("ISO_IR 192", "yamada*", {JAPANESE: "ISO_IR 192"}),
        ("ISO_IR 100", "*", {LATIN1: "ISO_IR 100", JAPANESE: "ISO_IR 192",
                             CHINESE: "ISO_IR 192", ASCII: "ISO_IR 100"}),
    ],
)  # fmt: skip
def test_queries_in_their_own_charset_match_non_ascii_names(
    archive: RunningArchive,
    charset: str | list[str] | None,
    pattern: str,
    expected: dict[str, object],
) -> None:
    found, status = find(archive, charset, pattern)
    assert status == 0x0000
    assert names(found) == expected


@pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")
def test_a_query_in_an_unknown_charset_is_refused(archive: RunningArchive) -> None:
    """pydicom would decode it as its default repertoire and match something else."""
    found, status = find(archive, "ISO_IR 999", "M*")
    assert (found, status) == ([], 0xA900)


Q_R = (
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
)


@pytest.mark.parametrize(
    "proposed",
    [[ExplicitVRBigEndian], [DeflatedExplicitVRLittleEndian], [ExplicitVRBigEndian,
     DeflatedExplicitVRLittleEndian]],
    ids=["big endian", "deflate", "both"],
)  # fmt: skip
def test_qr_contexts_in_a_syntax_the_codec_cannot_read_are_rejected(
    start: StartArchive, proposed: list[str]
) -> None:
    archive = start()
    endpoint = plain(archive)
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(Verification)
    for sop_class in Q_R:
        ae.add_requested_context(sop_class, proposed)
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        assert rejected == {str(sop_class): 0x04 for sop_class in Q_R}  # syntaxes not supported
        accepted = [str(cx.abstract_syntax) for cx in assoc.accepted_contexts]
        assert accepted == [str(Verification)]
    finally:
        assoc.release()


def test_big_endian_beside_little_endian_is_negotiated_to_little_endian(
    archive: RunningArchive,
) -> None:
    endpoint = plain(archive)
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(
        StudyRootQueryRetrieveInformationModelFind,
        [ExplicitVRBigEndian, ImplicitVRLittleEndian, ExplicitVRLittleEndian],
    )
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        (context,) = assoc.accepted_contexts
        assert context.transfer_syntax[0] in (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
        query = Dataset()
        query.SpecificCharacterSet = "ISO_IR 192"
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = "*\u5c71\u7530*"
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert [str(ds.PatientName) for status, ds in answers if ds is not None] == [JAPANESE]
    assert answers[-1][0].Status == 0x0000


@pytest.mark.parametrize(
    ("transfer_syntax", "name", "charset"),
    [
        (ExplicitVRBigEndian, JAPANESE, ["", "ISO 2022 IR 87"]),
        (DeflatedExplicitVRLittleEndian, LATIN1, "ISO_IR 100"),
    ],
    ids=["big endian", "deflate"],
)
def test_objects_in_syntaxes_the_fast_reader_leaves_to_pydicom_are_indexed_as_unicode(
    start: StartArchive, transfer_syntax: str, name: str, charset: str | list[str]
) -> None:
    """Storage contexts still take Big Endian and Deflate: pydicom reads those objects."""
    archive = start()
    ds = named(name, charset, "SYNTAX1")
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(ds.SOPClassUID, [transfer_syntax])
    endpoint = plain(archive)
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status is not None and status.Status == 0x0000
    record = archive.index.get(str(ds.SOPInstanceUID))
    assert record is not None
    assert (record.patient_name, record.transfer_syntax_uid) == (name, transfer_syntax)
    found, final = find(archive, "ISO_IR 192", "*")
    assert (names(found), final) == ({name: "ISO_IR 192"}, 0x0000)
