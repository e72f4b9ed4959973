"""Patient data at rest and in logs: after small and large (> 2 MiB, staged) synthetic objects
are stored through the real DIMSE front end and small ones through STOW-RS, queried by C-FIND
and QIDO-RS with patient values as keys, and retrieved by C-GET and WADO-RS, with every logger
at DEBUG, no file under the data folder (the audit log included) or the process's temp folder
(Python's and SQLite's, private to the test), no file created meanwhile in the system's temp
folder, no staged file while it is open, no log record and nothing the process printed holds a
patient's name, ID, birth date or accession number in any encoding it could be written in.

The scan is shown able to fail: it finds the same values in the plaintext inputs, and in the
index of an archive run with `encrypt_at_rest = false`.

The audit log names patients by reference (`archive.audit.patients`): `audit find` finds a
patient's stores and retrieves by pseudonym, and `audit export` decrypts the Patient IDs with
the archive's key and not with another.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import signal
import ssl
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from pacsguard.archive.app import RunningArchive, index_key
from pacsguard.archive.audit.patients import PatientKey
from pacsguard.archive.dimse.aio_receive import IN_MEMORY_OBJECT_BYTES
from pacsguard.archive.fsck import run_fsck
from pacsguard.archive.index import sqlcipher
from pacsguard.archive.index.matching import normalize_name
from pacsguard.archive.journal import RedactedFormatter
from pacsguard.cli import main
from pacsguard.errors import ConfigError
from pacsguard.lab.synth import SyntheticArchive, build_dataset, generate_archive
from tests.integration.web._multipart import related_body

from .conftest import StartArchive, free_port, make_data_dir, start_serve

BIRTH_DATE = 0x00100030

#: Pixels of a large object: 1024 x 1100 x 2 bytes, past the in-memory limit.
LARGE = (1024, 1100)


@dataclass(frozen=True)
class Needle:
    """One patient value and the byte strings it may be written as."""

    what: str
    forms: frozenset[bytes]

    def found_in(self, data: bytes) -> bool:
        return any(form in data for form in self.forms)


def needles(lab: Lab) -> list[Needle]:
    """Every patient value of `lab`, in UTF-8 (SQLite, JSON, ASCII DICOM), UTF-16 both ways,
    upper and lower case, the index's case-folded name key, name components on their own, and
    an SSN-shaped ID without its dashes."""
    found: list[Needle] = []

    def add(what: str, *values: str) -> None:
        forms: set[bytes] = set()
        for value in values:
            for variant in {value, value.upper(), value.lower(), normalize_name(value)}:
                for codec in ("utf-8", "utf-16-le", "utf-16-be"):
                    forms.add(variant.encode(codec))
        found.append(Needle(what, frozenset(forms)))

    for patient in lab.archive.patients:
        add("patient name", patient.name)
        add("family name", patient.name.split("^")[0])
        add("patient ID", patient.patient_id, patient.patient_id.replace("-", ""))
        add("birth date", patient.birth_date)
        for study in patient.studies:
            add("accession number", study.accession_number)
            add("referring physician", study.referring_physician.split("^")[0])
    return found


def scan(files: list[Path], wanted: list[Needle]) -> dict[Path, set[str]]:
    """{file: the kinds of values found in it}, for files holding any."""
    hits: dict[Path, set[str]] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:  # gone meanwhile, or not readable: not ours
            continue
        kinds = {n.what for n in wanted if n.found_in(data)}
        if kinds:
            hits[path] = kinds
    return hits


def files_under(root: Path) -> list[Path]:
    """Regular files under `root`."""
    return [
        Path(folder, name)
        for folder, _dirs, names in os.walk(root)
        for name in names
        if Path(folder, name).is_file() and not Path(folder, name).is_symlink()
    ]


def created_since(folder: Path, moment: float) -> list[Path]:
    """Regular files directly in `folder` created (or changed) at or after `moment`."""
    found = []
    for path in folder.iterdir():
        try:
            info = path.lstat()
        except OSError:  # gone meanwhile
            continue
        if stat.S_ISREG(info.st_mode) and max(info.st_ctime, info.st_mtime) >= moment:
            found.append(path)
    return found


@dataclass(frozen=True)
class Lab:
    """The synthetic patients of one test; their values stay out of pytest's reports."""

    archive: SyntheticArchive = field(repr=False)


@pytest.fixture
def lab() -> Lab:
    """Two patients with random SSN-shaped IDs and a seed of their own, so that no other test
    running beside this one writes the same values into the shared temp folder."""
    return Lab(
        generate_archive(
            secrets.randbelow(10**9),
            2,
            ssn_share=1.0,
            studies_per_patient=(1, 1),
            series_per_study=(2, 2),
            instances_per_series=(2, 2),
        )
    )


def objects(lab: Lab) -> list[Dataset]:
    """Every instance: the first series of each study small, the second large."""
    made = []
    for patient, study, series, instance in lab.archive.walk():
        size = LARGE if series.series_number == 2 else (8, 8)
        made.append(build_dataset(patient, study, series, instance, rows=size[0], columns=size[1]))
    return made


@dataclass(frozen=True)
class TempFolders:
    watched: Path  # the process-wide temp folder during the test, ours alone
    system: Path  # the system's, shared with every other process


@pytest.fixture
def temp_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TempFolders]:
    """The process-wide temp folder, as Python and SQLite find it, made a folder of our own
    for this test; the system's is also scanned, for files created meanwhile."""
    system = Path(tempfile.gettempdir())
    folder = tmp_path / "process-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    yield TempFolders(folder, system)


def client() -> AE:
    ae = AE(ae_title="TESTER")
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.maximum_pdu_size = 65536  # a large object arrives in many fragments
    return ae


#: An archive in this process, or `pacsguard serve`'s plaintext port on 127.0.0.1.
Archive = RunningArchive | int


def plain(archive: Archive) -> tuple[str, int]:
    """Where `archive` listens for DIMSE without TLS."""
    if isinstance(archive, int):
        return "127.0.0.1", archive
    endpoint = next(e for e in archive.endpoints if not e.tls and e.protocol == "dicom")
    return endpoint.host, endpoint.port


def store_all(archive: Archive, lab: Lab) -> list[int]:
    """Store every object through the plaintext DIMSE listener: the statuses."""
    assoc = client().associate(*plain(archive), ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        return [int(getattr(assoc.send_c_store(ds), "Status", -1)) for ds in objects(lab)]
    finally:
        assoc.release()


def find_each_patient(archive: Archive, lab: Lab) -> None:
    """Each patient is found by name: the (encrypted) index matches."""
    assoc = client().associate(*plain(archive), ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        for patient in lab.archive.patients:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientName = patient.name
            query.PatientID = ""
            query.StudyInstanceUID = ""
            answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            pending = [ds for status, ds in answers if status and status.Status == 0xFF00]
            assert [str(ds.PatientID) for ds in pending] == [patient.patient_id]
    finally:
        assoc.release()


@pytest.fixture
def web_lab() -> Lab:
    """One more patient, with a seed of its own, whose small objects go in by STOW-RS."""
    return Lab(
        generate_archive(
            secrets.randbelow(10**9),
            1,
            ssn_share=1.0,
            studies_per_patient=(1, 1),
            series_per_study=(1, 1),
            instances_per_series=(2, 2),
        )
    )


#: An archive with DICOMweb too (HTTP from 127.0.0.1 is TESTER's, trusted by address).
WITH_WEB = {"dicomweb.enabled": True}


def with_web() -> dict[str, object]:
    return {**WITH_WEB, "dicomweb.port": free_port()}


def small_objects(lab: Lab) -> list[Dataset]:
    return [build_dataset(*where, rows=8, columns=8) for where in lab.archive.walk()]


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def web_client(archive: RunningArchive) -> httpx.Client:
    https = next(e for e in archive.endpoints if e.protocol == "https")
    ca = archive.settings.storage.data_dir / "tls" / "ca.crt"
    return httpx.Client(
        base_url=f"https://{https.host}:{https.port}",
        verify=ssl.create_default_context(cafile=str(ca)),
        timeout=60,
    )


def stow_query_and_wado(archive: RunningArchive, lab: Lab) -> None:
    """STOW-RS every object of `lab` (small), find each patient by QIDO-RS with its name, ID,
    birth date and accession number as keys, and WADO-RS its study (instances and metadata)."""
    body, content_type = related_body(part10(ds) for ds in small_objects(lab))
    with web_client(archive) as client:
        stored = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        assert stored.status_code == 200, stored.status_code
        for patient in lab.archive.patients:
            study = patient.studies[0]
            found = client.get(
                "/studies",
                params={
                    "PatientName": patient.name,
                    "PatientID": patient.patient_id,
                    "PatientBirthDate": patient.birth_date,
                    "AccessionNumber": study.accession_number,
                },
                headers={"Accept": "application/dicom+json"},
            )
            assert found.status_code == 200 and len(found.json()) == 1
            # A malformed value is refused, and audited without the value
            bad = client.get("/studies", params={"PatientBirthDate": patient.birth_date + "X"})
            assert bad.status_code == 400
            uid = study.study_instance_uid
            whole = client.get(
                f"/studies/{uid}", headers={"Accept": 'multipart/related; type="application/dicom"'}
            )
            assert whole.status_code == 200
            assert client.get(f"/studies/{uid}/metadata").status_code == 200


def find_by_patient_values(archive: Archive, lab: Lab) -> None:
    """C-FIND each study with the patient's ID, birth date and accession number as keys."""
    assoc = client().associate(*plain(archive), ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        for patient in lab.archive.patients:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientID = patient.patient_id
            query.PatientBirthDate = patient.birth_date
            query.AccessionNumber = patient.studies[0].accession_number
            query.StudyInstanceUID = ""
            answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            pending = [ds for status, ds in answers if status and status.Status == 0xFF00]
            assert len(pending) == 1
            malformed = patient.birth_date + "X"  # refused, and audited without the value
            query[BIRTH_DATE] = DataElement(BIRTH_DATE, "DA", malformed, validation_mode=IGNORE)
            answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            assert [int(s.Status) for s, _ in answers if s] == [0xA900]
    finally:
        assoc.release()


def get_study(archive: Archive, study_uid: str) -> int:
    """C-GET one study through the plaintext listener: how many instances arrived."""
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    assoc = ae.associate(
        *plain(archive),
        ae_title="PACSGUARD",
        ext_neg=[build_role(c, scp_role=True) for c in (CTImageStorage, MRImageStorage)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    try:
        statuses = [
            int(s.Status)
            for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
            if s
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    return len(received)


#: Loggers of this test's own clients (pynetdicom logs a C-FIND's identifier at DEBUG).
CLIENT_LOGGERS = ("pynetdicom", "httpx", "httpcore")


def archive_record(record: logging.LogRecord) -> bool:
    return not record.name.startswith(CLIENT_LOGGERS)


def open_files(under: tuple[Path, ...]) -> dict[Path, Path]:
    """This process's open regular files under `under`, named or not (O_TMPFILE, unlinked):
    {/proc/self/fd path that reads it: the file's path}."""
    found: dict[Path, Path] = {}
    for fd in os.listdir("/proc/self/fd"):
        link = Path("/proc/self/fd", fd)
        try:
            target = Path(os.readlink(link).removesuffix(" (deleted)"))
            regular = link.is_file()
        except OSError:
            continue
        if regular and any(target.is_relative_to(root) for root in under):
            found[link] = target
    return found


def watch_staging(
    archive: RunningArchive,
    monkeypatch: pytest.MonkeyPatch,
    wanted: list[Needle],
    folders: tuple[Path, ...],
) -> list[dict[Path, set[str]]]:
    """Scan, while each staged object is being stored, every file under `folders` and every
    open file there (the staged one has no name): one scan result per staged object."""
    scans: list[dict[Path, set[str]]] = []
    original = archive.service.store_instance

    def store_instance(principal: Any, source: Any, **kwargs: Any) -> Any:
        if not isinstance(source, bytes):
            opened = open_files(folders)
            assert any(t.parent.name == "tmp" for t in opened.values()), "nothing staged"
            hits = scan([*opened, *(f for d in folders for f in files_under(d))], wanted)
            scans.append({opened.get(path, path): kinds for path, kinds in hits.items()})
        return original(principal, source, **kwargs)

    monkeypatch.setattr(archive.service, "store_instance", store_instance)
    return scans


def test_no_patient_data_rests_in_clear_or_is_logged(
    start: StartArchive,
    lab: Lab,
    web_lab: Lab,
    temp_folders: TempFolders,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, all levels
    # SQLAlchemy keeps its loggers at WARNING unless asked: its statements, asked for
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    journal = logging.StreamHandler(sys.stderr)  # as `serve` writes its journal
    journal.setFormatter(RedactedFormatter())
    journal.addFilter(archive_record)
    logging.getLogger().addHandler(journal)
    try:
        check_no_patient_data(start, lab, web_lab, temp_folders, monkeypatch, caplog, capfd)
    finally:
        logging.getLogger().removeHandler(journal)


def check_no_patient_data(
    start: StartArchive,
    lab: Lab,
    web_lab: Lab,
    temp_folders: TempFolders,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    watched_temp = temp_folders.watched
    began = time.time() - 1
    wanted = needles(lab) + needles(web_lab)
    archive = start(**with_web())
    data_dir = archive.settings.storage.data_dir
    staged = watch_staging(archive, monkeypatch, wanted, (data_dir, watched_temp))
    statuses = store_all(archive, lab)
    large = sum(1 for ds in objects(lab) if len(ds.PixelData) > IN_MEMORY_OBJECT_BYTES)
    assert large == 4 and len(staged) == large  # the large ones were staged, the small not
    for hits in staged:
        assert hits == {}
    service = archive.service  # staging watched: STOW-RS goes in unwatched
    monkeypatch.setattr(service, "store_instance", type(service).store_instance.__get__(service))
    assert statuses == [0x0000] * 8
    stow_query_and_wado(archive, web_lab)
    find_each_patient(archive, lab)
    find_by_patient_values(archive, lab)
    for patient in lab.archive.patients:
        assert get_study(archive, patient.studies[0].study_instance_uid) == 4
    assert not list((data_dir / "tmp").iterdir())  # and nothing staged is left
    running = files_under(data_dir) + files_under(watched_temp)
    assert any(p.name == "index.sqlite3-wal" for p in running)  # the WAL is scanned too
    audit = archive.settings.audit.log_path
    assert audit in running  # the audit log is scanned like any other file
    during = scan(running, wanted)
    archive.stop()
    after = scan(files_under(data_dir) + files_under(watched_temp), wanted)
    assert during == {} and after == {}
    # The system's temp folder, for a path written there by name rather than through Python's
    # or SQLite's temp folder (both were the watched one): its files created meanwhile. Only
    # its top level: below it are other processes' folders (other test runs' PostgreSQL
    # clusters, hundreds of MB), which write synthetic patients too; so only values unique
    # to this test's random lab count.
    fresh = created_since(temp_folders.system, began)
    unique = [n for n in wanted if n.what in ("patient name", "patient ID")]
    assert scan(fresh, unique) == {}
    records = [r for r in caplog.records if archive_record(r)]
    assert any(r.name.startswith("sqlalchemy.engine") for r in records)  # DEBUG reached them
    logged = "\n".join(r.getMessage() for r in records).encode()
    printed = "".join(capfd.readouterr()).encode()
    for needle in wanted:
        assert not needle.found_in(logged) and not needle.found_in(printed), needle.what


def test_audit_find_lists_a_patients_stores_and_retrieves_and_export_decrypts(
    start: StartArchive,
    lab: Lab,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Stored by C-STORE, retrieved by C-GET and WADO-RS: `audit find` lists exactly those
    events of the patient, by pseudonym, with the Patient ID read from standard input; the
    export names the patients by ID with the archive's key, by pseudonym with another."""
    archive = start(**with_web())
    small = [ds for ds in objects(lab) if len(ds.PixelData) < IN_MEMORY_OBJECT_BYTES]
    endpoint = next(e for e in archive.endpoints if not e.tls)
    assoc = client().associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert [assoc.send_c_store(ds).Status for ds in small] == [0x0000] * len(small)
    assoc.release()
    first, second = lab.archive.patients
    study = first.studies[0].study_instance_uid
    assert get_study(archive, study) == 2
    with web_client(archive) as web:
        assert web.get(f"/studies/{study}").status_code == 200
    archive.stop()
    log, key = archive.settings.audit.log_path, archive.settings.storage.key_file
    monkeypatch.setattr(sys, "stdin", io.StringIO(first.patient_id + "\n"))
    assert main(["audit", "find", str(log), "--key-file", str(key)]) == 0
    found = capsys.readouterr()
    events = sorted(line.split("\t")[2] for line in found.out.splitlines())
    assert events == ["move-request", "move-request", "retrieve", "retrieve", "store", "store"]
    assert first.patient_id not in found.out + found.err
    pseudonym = PatientKey(key.read_bytes()).pseudonym(first.patient_id)
    assert f"6 events about patient {pseudonym}" in found.err
    assert pseudonym in log.read_text(encoding="utf-8")
    assert main(["audit", "find", str(log), "--pseudonym", pseudonym]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    exported = tmp_path / "audit.xml"
    assert main(["audit", "export", str(log), "--key-file", str(key), "-o", str(exported)]) == 0
    text = exported.read_text(encoding="utf-8")
    assert first.patient_id in text and second.patient_id in text
    assert "patient references decrypted" in capsys.readouterr().err
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    assert main(["audit", "export", str(log), "--key-file", str(other), "-o", str(exported)]) == 0
    text = exported.read_text(encoding="utf-8")
    assert first.patient_id not in text and pseudonym in text
    assert "do not open with this key" in capsys.readouterr().err


def test_the_serve_journal_at_debug_holds_no_patient_data(tmp_path: Path, lab: Lab) -> None:
    """`pacsguard serve --log-level debug` as a process: after C-STORE (small and large),
    C-FIND with patient values as keys and C-GET, its output (stdout and stderr) holds DEBUG
    lines and no patient value, and neither does its data folder."""
    data_dir = make_data_dir(tmp_path / "data")
    port = free_port()
    journal = tmp_path / "serve.log"
    proc = start_serve(data_dir, port, journal, "--log-level", "debug")
    try:
        assert store_all(port, lab) == [0x0000] * 8
        find_each_patient(port, lab)
        find_by_patient_values(port, lab)
        study = lab.archive.patients[0].studies[0].study_instance_uid
        assert get_study(port, study) == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    printed = journal.read_bytes()
    assert b" DEBUG " in printed  # the level was applied (asyncio, uvicorn, ours)
    wanted = needles(lab)
    assert [n.what for n in wanted if n.found_in(printed)] == []
    assert scan(files_under(data_dir), wanted) == {}


def test_the_scan_finds_what_is_there(
    start: StartArchive, lab: Lab, temp_folders: TempFolders, tmp_path: Path
) -> None:
    """The same scan on the plaintext inputs and on an archive without encryption at rest."""
    wanted = needles(lab)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for n, ds in enumerate(objects(lab)):
        ds.save_as(inputs / f"{n}.dcm", enforce_file_format=True)
    kinds = {"patient name", "family name", "patient ID", "birth date", "accession number"}
    kinds |= {"referring physician"}
    found = scan(files_under(inputs), wanted)
    assert len(found) == 8 and all(k == kinds for k in found.values())
    archive = start(**{"storage.encrypt_at_rest": False})
    assert store_all(archive, lab) == [0x0000] * 8
    find_each_patient(archive, lab)
    data_dir = archive.settings.storage.data_dir
    index = scan([p for p in files_under(data_dir) if p.name.startswith("index.sqlite3")], wanted)
    assert set().union(*index.values()) == kinds
    archive.stop()


def test_fsck_and_serve_open_the_index_with_the_key_and_only_with_it(
    start: StartArchive, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = start()
    small = [ds for ds in objects(lab) if len(ds.PixelData) < IN_MEMORY_OBJECT_BYTES]
    endpoint = next(e for e in archive.endpoints if not e.tls)
    assoc = client().associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert [assoc.send_c_store(ds).Status for ds in small] == [0x0000] * len(small)
    assoc.release()
    archive.stop()
    data_dir = archive.settings.storage.data_dir
    key_file = archive.settings.storage.key_file
    assert main(["fsck", "--data-dir", str(data_dir)]) == 0
    assert f"{len(small)} instances in the index" in capsys.readouterr().out
    kept = key_file.read_bytes()
    index = data_dir / "index.sqlite3"
    before = index.read_bytes()
    key_file.write_bytes(bytes(32))  # another key: the index must not open, nor change
    assert main(["fsck", "--data-dir", str(data_dir)]) == 2
    assert "storage.key_file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="encrypted with another key"):
        start(data_dir)
    # The start failed cleanly: its audit log closed again, the index untouched.
    assert "pacsguard-audit-sync" not in {t.name for t in threading.enumerate()}
    assert index.read_bytes() == before
    key_file.write_bytes(kept)
    assert main(["fsck", "--data-dir", str(data_dir)]) == 0
    # A damaged blob: fsck says which, and its report holds no patient value
    blob = next(p for p in files_under(data_dir / "blobs") if p.parent.name != "objects")
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    assert main(["fsck", "--data-dir", str(data_dir)]) == 1
    report = "".join(capsys.readouterr()).encode()
    assert b"unreadable" in report
    assert [n.what for n in needles(lab) if n.found_in(report)] == []


def decrypt_index(path: Path, key: bytes) -> None:
    """Turn an encrypted index back into the plaintext file an older pacsguard left."""
    plain = path.with_name("plain.sqlite3")
    connection = sqlcipher.dbapi().connect(str(path), isolation_level=None)
    try:
        sqlcipher.apply_key(connection, key)
        connection.execute("ATTACH DATABASE ? AS plaintext KEY ''", (str(plain),))
        connection.execute("SELECT sqlcipher_export('plaintext')").fetchall()
        connection.execute("DETACH DATABASE plaintext")
    finally:
        connection.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    plain.replace(path)


def test_an_older_data_folder_is_upgraded_in_place(start: StartArchive, lab: Lab) -> None:
    """Blobs encrypted, index in clear (what pacsguard wrote before SQLCipher): the next start
    encrypts the index, and every instance is still found, retrievable and consistent."""
    archive = start()
    statuses = store_all(archive, lab)
    assert statuses == [0x0000] * 8
    archive.stop()
    data_dir = archive.settings.storage.data_dir
    index = data_dir / "index.sqlite3"
    decrypt_index(index, cast(bytes, index_key(archive.settings)))
    wanted = needles(lab)
    assert sqlcipher.is_plaintext(index) and scan([index], wanted)  # the older state
    again = start(data_dir)
    assert not sqlcipher.is_plaintext(index)
    find_each_patient(again, lab)
    assert run_fsck(again.index, again.blobs, verify_hashes=True).ok
    assert len(list(again.index.all_blob_keys())) == 8
    again.stop()
    assert scan(files_under(data_dir), wanted) == {}
