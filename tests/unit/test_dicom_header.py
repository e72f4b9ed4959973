"""The fast header reader agrees with pydicom, and hands back (None) whatever it cannot follow."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from pacsguard.archive.service import INDEXED_KEYWORDS
from pacsguard.dicom.header import read_header
from pacsguard.lab.synth import build_dataset, generate_archive

ARCHIVE = generate_archive(7, 2, studies_per_patient=(1, 1), series_per_study=(1, 1),
                           instances_per_series=(2, 2))  # fmt: skip


def _dataset() -> Dataset:
    patient, study, one_series, instance = next(iter(ARCHIVE.walk()))
    ds = build_dataset(patient, study, one_series, instance)
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
    ds.PixelData = b"\x00\x01" * 4
    return ds


def _part10(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _by_pydicom(data: bytes) -> dict[str, str]:
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    values = {k: str(ds.get(k, "") or "").strip() for k in INDEXED_KEYWORDS}
    values["TransferSyntaxUID"] = str(ds.file_meta.TransferSyntaxUID)
    return values


def _with_sequences(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    inner = Dataset()
    inner.CodeValue = "T-D0050"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedStudySequence = Sequence([item, Dataset()])
    ds.ProcedureCodeSequence = Sequence([])
    return ds


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined_lengths", [False, True])
def test_matches_pydicom(transfer_syntax: str, undefined_lengths: bool) -> None:
    ds = _with_sequences(_dataset())
    if undefined_lengths:
        for keyword in ("ReferencedStudySequence", "ProcedureCodeSequence"):
            ds[keyword].is_undefined_length = True
            for item in ds[keyword].value:
                item.is_undefined_length_sequence_item = True
    data = _part10(ds, transfer_syntax)
    if undefined_lengths:  # the sequences really are written with delimiters
        assert b"\xfe\xff\xdd\xe0" in data and b"\xfe\xff\x0d\xe0" in data
    values = read_header(data, INDEXED_KEYWORDS)
    assert values == _by_pydicom(data)
    assert values is not None and values["PatientName"]  # the lab's synthetic name


def test_encapsulated_pixel_data_and_latin1_names() -> None:
    ds = _dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "M\u00fcller^J\u00fcrgen"
    ds.PixelData = encapsulate([b"\xff\xd8frame\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    data = _part10(ds, JPEGBaseline8Bit)
    values = read_header(data, INDEXED_KEYWORDS)
    assert values == _by_pydicom(data)
    assert values is not None and values["PatientName"] == "M\u00fcller^J\u00fcrgen"


def test_absent_attributes_are_empty() -> None:
    ds = _dataset()
    del ds.AccessionNumber
    values = read_header(_part10(ds, ExplicitVRLittleEndian), INDEXED_KEYWORDS)
    assert values is not None and values["AccessionNumber"] == ""


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda d: d[:-3], id="truncated pixel data"),
        pytest.param(lambda d: d[:100], id="no file meta"),
        pytest.param(lambda d: d[:128] + b"NOPE" + d[132:], id="no DICM"),
        pytest.param(lambda d: d + b"\x08\x00", id="trailing half header"),
    ],
)
def test_broken_objects_go_to_pydicom(spoil: object) -> None:
    data = _part10(_dataset(), ExplicitVRLittleEndian)
    assert callable(spoil)
    assert read_header(spoil(data), INDEXED_KEYWORDS) is None


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_encodings_go_to_pydicom(transfer_syntax: str) -> None:
    ds = _dataset()
    assert read_header(_part10(ds, transfer_syntax), INDEXED_KEYWORDS) is None


def test_code_extensions_go_to_pydicom() -> None:
    ds = _dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    assert read_header(_part10(ds, ExplicitVRLittleEndian), INDEXED_KEYWORDS) is None


def test_runaway_nesting_is_refused() -> None:
    ds = _dataset()
    nested = Dataset()
    for _ in range(40):
        outer = Dataset()
        nested.is_undefined_length_sequence_item = True
        outer.ReferencedStudySequence = Sequence([nested])
        outer["ReferencedStudySequence"].is_undefined_length = True
        nested = outer
    ds.ReferencedStudySequence = nested.ReferencedStudySequence
    ds["ReferencedStudySequence"].is_undefined_length = True
    assert read_header(_part10(ds, ExplicitVRLittleEndian), INDEXED_KEYWORDS) is None


def test_an_unknown_vr_goes_to_pydicom() -> None:
    data = _part10(_dataset(), ExplicitVRLittleEndian)
    patient_id = b"\x10\x00\x20\x00LO"
    assert patient_id in data
    assert read_header(data.replace(patient_id, b"\x10\x00\x20\x00XX"), INDEXED_KEYWORDS) is None


#: Synthetic names: Latin-1 and the PS3.5 H.3.1 / I.2 examples' shape (Japanese, Korean).
NAMES = {
    "latin1": "M\u00fcller^J\u00fcrgen",
    "japanese": "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
    "korean": "Hong^Gildong=\u6d2a^\u5409\u6d1e=\ud64d^\uae38\ub3d9",
}


@pytest.mark.parametrize(
    ("charset", "name", "fast"),
    [
        pytest.param(None, NAMES["latin1"], True, id="undeclared, Latin-1 bytes"),
        pytest.param("ISO_IR 100", NAMES["latin1"], True, id="ISO_IR 100"),
        pytest.param("ISO_IR 192", NAMES["japanese"], True, id="ISO_IR 192"),
        pytest.param(["", "ISO 2022 IR 87"], NAMES["japanese"], False, id="ISO 2022 IR 87"),
        pytest.param(["", "ISO 2022 IR 149"], NAMES["korean"], False, id="ISO 2022 IR 149"),
    ],
)
def test_names_read_as_pydicom_reads_them(
    charset: str | list[str] | None, name: str, fast: bool
) -> None:
    """The fast path decodes what it can exactly as pydicom does (undeclared text as pydicom's
    default, ISO 8859-1); code extensions are left to pydicom, which decodes them to Unicode."""
    ds = _dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    data = _part10(ds, ExplicitVRLittleEndian)
    assert _by_pydicom(data)["PatientName"] == name
    values = read_header(data, INDEXED_KEYWORDS)
    if fast:
        assert values == _by_pydicom(data)
    else:
        assert values is None


def test_an_escape_sequence_under_a_plain_charset_goes_to_pydicom() -> None:
    """ISO_IR 100 allows no code extensions, but an ESC in a value is pydicom's to interpret."""
    ds = _dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Doe^Jane"
    data = _part10(ds, ExplicitVRLittleEndian)
    assert read_header(data.replace(b"Doe^Jane", b"Doe^\x1b(BJn"), INDEXED_KEYWORDS) is None


def test_file_meta_that_pydicom_reads_otherwise_goes_to_pydicom() -> None:
    """Found by fuzzing (tests/fuzz/targets/header.py): pydicom ends the File Meta at the first
    element outside group 0002 and reads a Transfer Syntax UID with other bytes its own way;
    the fast path gave other values than pydicom for both."""
    data = _part10(_dataset(), ExplicitVRLittleEndian)
    syntax = ExplicitVRLittleEndian.encode()
    assert read_header(data, INDEXED_KEYWORDS) is not None
    assert read_header(data.replace(syntax, b"\xb1" + syntax[1:]), INDEXED_KEYWORDS) is None
    version = b"\x02\x00\x01\x00OB"
    assert version in data
    assert read_header(data.replace(version, b"\xff\xff\x01\x00OB"), INDEXED_KEYWORDS) is None


def test_a_transfer_syntax_with_leading_padding_goes_to_pydicom() -> None:
    """Found by fuzzing: pydicom keeps leading NULs in a UID, we stripped them."""
    data = _part10(_dataset(), ExplicitVRLittleEndian)
    syntax = ExplicitVRLittleEndian.encode()
    assert read_header(data.replace(syntax, b"\x00" + syntax[1:]), INDEXED_KEYWORDS) is None
