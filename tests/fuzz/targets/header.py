"""The header walker (`pacsguard.dicom.header.read_header`) against pydicom: whenever the fast
path returns values, pydicom must read the same object and the archive's pydicom path
(`service._header_by_pydicom`) must give the same values. None (pydicom decides) is always an
allowed answer; an exception never is."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from pacsguard.archive.service import INDEXED_KEYWORDS, _header_by_pydicom
from pacsguard.dicom.header import read_header
from pacsguard.lab.synth import build_dataset, generate_archive
from tests.fuzz.harness import Defect, Harness


def check(data: bytes) -> None:
    values = read_header(data, INDEXED_KEYWORDS)
    if values is None:
        return
    try:
        reference = _header_by_pydicom(dcmread(BytesIO(data), stop_before_pixels=True))
    except Exception as exc:
        raise Defect(f"read_header read an object pydicom refuses: {exc!r}") from exc
    if values != reference:
        differ = sorted(k for k in values if values[k] != reference.get(k))
        raise Defect(f"read_header and pydicom disagree on {differ}")


def _part10(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def seeds() -> Iterator[bytes]:
    archive = generate_archive(3, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                               instances_per_series=(1, 1))  # fmt: skip
    patient, study, series, instance = next(iter(archive.walk()))

    def dataset() -> Dataset:
        ds = build_dataset(patient, study, series, instance)
        ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
        ds.PixelData = b"\x00\x01" * 4
        return ds

    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        yield _part10(dataset(), syntax)
        ds = dataset()
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        item.ReferencedSOPInstanceUID = "1.2.3.4"
        inner = Dataset()
        inner.CodeValue = "T-D0050"
        item.ConceptNameCodeSequence = Sequence([inner])
        inner.is_undefined_length_sequence_item = True
        ds.ReferencedStudySequence = Sequence([item, Dataset()])
        ds["ReferencedStudySequence"].is_undefined_length = True
        ds["ReferencedStudySequence"].value[0]["ConceptNameCodeSequence"].is_undefined_length = True
        ds.ProcedureCodeSequence = Sequence([])
        yield _part10(ds, syntax)
    ds = dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "M\u00fcller^J\u00fcrgen"
    ds.PixelData = encapsulate([b"\xff\xd8frame\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    yield _part10(ds, JPEGBaseline8Bit)


HARNESS = Harness(
    name="header",
    check=check,
    seeds=seeds,
    max_len=8192,
)
