"""Every DICOM file pydicom ships for its own tests (and those of the `pydicom-data` package)
through the header walker, compared with pydicom: the same indexed values, or None (the archive
then asks pydicom) for a reason listed here. The same files go through C-STORE -> C-GET in
tests/integration/serve/test_pydicom_files_roundtrip.py."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path
from typing import Final

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files

from pacsguard.archive.service import INDEXED_KEYWORDS, _header_by_pydicom
from pacsguard.dicom.header import read_header

FILES: Final = sorted(
    (Path(p) for p in get_testdata_files() if Path(p).is_file()), key=lambda p: (p.name, p)
)
#: Transfer syntaxes the walker leaves to pydicom by design (header.py docstring).
BY_DESIGN: Final = {
    "1.2.840.10008.1.2.2": "Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflate",
}
#: Files the walker leaves to pydicom, and why.
FALLBACK: Final = {
    "MR_truncated.dcm": "ends inside its pixel data (pydicom stops before it)",
    "rtplan_truncated.dcm": "ends inside an element",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "ends inside its pixel data",
    "no_meta_group_length.dcm": "File Meta without a group length",
    "meta_missing_tsyntax.dcm": "File Meta without a Transfer Syntax UID",
    "SC_rgb_jpeg.dcm": "an element whose VR bytes are not a VR",
    "UN_sequence.dcm": "an undefined-length UN element (pydicom's sequence inference)",
    "J2K_pixelrep_mismatch.dcm": "ISO 2022 code extensions in Specific Character Set",
}


def test_pydicom_data_is_installed() -> None:
    """193 files come with pydicom 3.0, 68 more with pydicom-data 1.0 (from PyPI)."""
    assert len(FILES) > 200
    assert any("pydicom_data" in str(p) or "data_store" in str(p) for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_header_walker_agrees_with_pydicom(path: Path) -> None:
    data = path.read_bytes()
    values = read_header(data, INDEXED_KEYWORDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reference = _header_by_pydicom(dcmread(BytesIO(data), stop_before_pixels=True))
        except Exception:
            reference = None
    if values is not None:
        assert reference is not None, "read_header read a file pydicom refuses"
        assert values == reference
        return
    if data[128:132] != b"DICM":
        return  # no Part 10 preamble: not an object the archive receives as such
    if reference is not None and reference["TransferSyntaxUID"] in BY_DESIGN:
        return
    assert path.name in FALLBACK, "read_header left a file to pydicom for no listed reason"
