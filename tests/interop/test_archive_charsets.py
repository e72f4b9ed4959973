"""Names in Latin-1, UTF-8 and ISO 2022 IR 87 (Japanese) stored by dcmtk's storescu and read
back by dcmtk's findscu and by pynetdicom, through the archive's loopback plaintext listener.

Two independent decoders check each answer: pydicom on the responses findscu extracts to files
(-X: the bytes as sent, with their declared Specific Character Set), and dcmtk itself, which
converts every response to UTF-8 when it writes them as one XML file (-Xs). Debian's dcmtk
converts through glibc iconv, which has no ISO 2022 IR 87: a Japanese answer in that set is
checked by pydicom only (and by its escape sequences).

The names are synthetic; the Japanese one is the example of PS3.5 H.3.1.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from pacsguard.archive.app import RunningArchive, start_archive
from pacsguard.archive.config import load_settings
from pacsguard.archive.security.bootstrap import initialize
from pacsguard.lab.synth import build_dataset, generate_archive

from .conftest import require_tools
from .peers import ToolOutcome, executable, free_port, run_tool

pytestmark = pytest.mark.interop

LATIN1 = "M\u00fcller^J\u00fcrgen"
JAPANESE = "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046"
CHINESE = "Wang^XiaoDong=\u738b^\u5c0f\u6771"
ASCII = "Doe^Jane"
IR87 = ["", "ISO 2022 IR 87"]
#: name -> the Specific Character Set its object is written in.
STORED: dict[str, str | list[str] | None] = {
    LATIN1: "ISO_IR 100",
    JAPANESE: IR87,
    CHINESE: "ISO_IR 192",
    ASCII: None,
}

TESTER = """
[[ae]]
ae_title = "TESTER"
auth = "address"
address = "127.0.0.1"
permissions = ["echo", "store", "find"]
"""


@dataclass
class Archive:
    running: RunningArchive
    port: int


def _objects(directory: Path) -> list[Path]:
    """One Part 10 file per name of STORED, each a study of its own."""
    lab = generate_archive(3, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                           instances_per_series=(1, 1))  # fmt: skip
    patient, study, series, instance = next(iter(lab.walk()))
    files = []
    for number, (name, charset) in enumerate(STORED.items()):
        ds = build_dataset(patient, study, series, instance)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID = f"CHARSET{number}"
        if charset is not None:
            ds.SpecificCharacterSet = charset
        ds.PatientName = name
        path = directory / f"object{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """A running archive holding the STORED names, stored by dcmtk's storescu."""
    require_tools("storescu", "findscu")
    data_dir = tmp_path_factory.mktemp("archive")
    initialize(data_dir)
    config = data_dir / "pacsguard.toml"
    text = config.read_text(encoding="utf-8").replace(
        "allow_address_auth = false", "allow_address_auth = true"
    )
    config.write_text(text + TESTER, encoding="utf-8")
    port = free_port()
    settings = load_settings(
        config, env={}, overrides={"server.dimse_port": free_port(), "server.plaintext_port": port}
    )
    running = start_archive(settings)
    try:
        files = _objects(tmp_path_factory.mktemp("objects"))
        stored = dcmtk("storescu", *_peer(port), *(str(f) for f in files))
        assert stored.ok, stored.log[-2000:]
        assert stored.log.count("Received Store Response (Success)") == len(files)
        yield Archive(running, port)
    finally:
        running.stop()


def dcmtk(tool: str, *args: str) -> ToolOutcome:
    completed = run_tool([str(executable(tool)), "-v", *args], timeout=120.0)
    return ToolOutcome.from_completed(completed)


def _peer(port: int) -> list[str]:
    return ["-aet", "TESTER", "-aec", "PACSGUARD", "127.0.0.1", str(port)]


def _keys(*keys: str) -> list[str]:
    out = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    for key in keys:
        out += ["-k", key]
    return out


def extracted(a: Archive, out: Path, *args: str, query: Path | None = None) -> list[Dataset]:
    """findscu's responses as the files it extracts (-X), read by pydicom."""
    out.mkdir()
    files = [] if query is None else [str(query)]
    outcome = dcmtk("findscu", *args, "-X", "-od", str(out), *_peer(a.port), *files)
    assert outcome.ok, outcome.log[-2000:]
    return [dcmread(path) for path in sorted(out.iterdir())]


def converted(a: Archive, out: Path, *args: str) -> list[str]:
    """The patient names of findscu's responses as dcmtk converts them to UTF-8 (-Xs)."""
    path = out / "responses.xml"
    outcome = dcmtk("findscu", *args, "-Xs", str(path), *_peer(a.port))
    assert outcome.ok, outcome.log[-2000:]
    root = ET.parse(path).getroot()
    assert root.tag == "responses"
    return sorted(
        (element.text or "").strip()
        for element in root.iter("element")
        if element.get("name") == "PatientName"
    )


def declared(responses: list[Dataset]) -> dict[str, object]:
    """Decoded name -> the Specific Character Set its response declared."""
    return {str(ds.PatientName): ds.get("SpecificCharacterSet") for ds in responses}


def test_findscu_without_a_charset_gets_names_declared(archive: Archive, tmp_path: Path) -> None:
    responses = extracted(archive, tmp_path / "x", *_keys("PatientName"))
    assert declared(responses) == {
        LATIN1: "ISO_IR 192",
        JAPANESE: "ISO_IR 192",
        CHINESE: "ISO_IR 192",
        ASCII: None,
    }
    assert converted(archive, tmp_path, *_keys("PatientName")) == sorted(STORED)


def test_findscu_in_latin1_gets_latin1_where_it_fits(archive: Archive, tmp_path: Path) -> None:
    # The query's bytes are ISO 8859-1, as a Latin-1 terminal would type them.
    pattern = os.fsdecode("PatientName=M\u00fc*".encode("latin-1"))
    keys = _keys("SpecificCharacterSet=ISO_IR 100", pattern)
    responses = extracted(archive, tmp_path / "x", *keys)
    assert declared(responses) == {LATIN1: "ISO_IR 100"}
    assert converted(archive, tmp_path, *keys) == [LATIN1]
    everyone = _keys("SpecificCharacterSet=ISO_IR 100", "PatientName=*")
    assert declared(extracted(archive, tmp_path / "all", *everyone)) == {
        LATIN1: "ISO_IR 100",
        JAPANESE: "ISO_IR 192",  # not in Latin-1: UTF-8, declared
        CHINESE: "ISO_IR 192",
        ASCII: "ISO_IR 100",
    }
    assert converted(archive, tmp_path, *everyone) == sorted(STORED)


def test_findscu_in_utf8_matches_wildcards_on_ideographs(archive: Archive, tmp_path: Path) -> None:
    keys = _keys("SpecificCharacterSet=ISO_IR 192", "PatientName=*\u5c71\u7530^?\u90ce*")
    assert declared(extracted(archive, tmp_path / "x", *keys)) == {JAPANESE: "ISO_IR 192"}
    assert converted(archive, tmp_path, *keys) == [JAPANESE]


def test_findscu_query_file_in_iso2022_ir87_gets_ir87(archive: Archive, tmp_path: Path) -> None:
    """A Japanese query (JIS X 0208 behind escape sequences) is decoded, matched, and answered
    in the same character set."""
    query = Dataset()
    query.SpecificCharacterSet = IR87
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "*=\u3084\u307e\u3060^*"
    query.StudyInstanceUID = ""
    query.file_meta = FileMetaDataset()
    query.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "query.dcm"
    query.save_as(path, enforce_file_format=False)
    (response,) = extracted(archive, tmp_path / "x", "-S", query=path)
    assert response.SpecificCharacterSet == IR87
    raw = response.get_item("PatientName").value
    assert b"\x1b$B" in raw and b"\xe5" not in raw  # JIS X 0208 escapes, no UTF-8 bytes
    assert str(response.PatientName) == JAPANESE


def test_pynetdicom_finds_what_storescu_stored(archive: Archive) -> None:
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACSGUARD")
    assert assoc.is_established
    query = Dataset()
    query.SpecificCharacterSet = IR87
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "*\u5c71\u7530*"
    try:
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    found = [ds for status, ds in answers if status and status.Status == 0xFF00]
    assert declared(found) == {JAPANESE: IR87}
    assert answers[-1][0].Status == 0x0000
