"""The audit log on a real full filesystem (a small tmpfs this test mounts), through the real
service, index and blob store: stores fail closed with 0xA700 while the log cannot be written,
no acknowledged store lacks its line, no partial line reaches the chain, and stores succeed
again, without a restart, once space returns."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from pacsguard.archive.audit.log import AuditLog, verify
from pacsguard.archive.audit.notify import AuditFanout
from pacsguard.archive.blobs.folder import FolderBlobStore
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.model import QueryRequest
from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.archive.service import OUT_OF_RESOURCES, ArchiveService
from pacsguard.dicom.levels import Level, QueryRoot
from pacsguard.errors import AuditLogError
from pacsguard.lab.synth import build_dataset, generate_archive

from ..full_disk import fill

PRINCIPAL = Principal("MODALITY", "127.0.0.1", AuthMethod.ADDRESS, None, frozenset(Action))


def _objects(count: int) -> list[tuple[str, bytes]]:
    lab = generate_archive(23, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                           instances_per_series=(count, count))  # fmt: skip
    found = []
    for patient, study, series, instance in lab.walk():
        ds: Dataset = build_dataset(patient, study, series, instance)
        ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
        ds.PixelData = b"\x00\x01" * 4
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        found.append((str(ds.SOPInstanceUID), out.getvalue()))
    return found


def _store_lines(path: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    return [r for r in records if r["event"] == "store"]


def _instance(record: dict[str, object]) -> str:
    """The SOP Instance UID a store line names."""
    objects = record["objects"]
    assert isinstance(objects, list)
    return next(str(ident) for kind, ident in objects if kind == "instance")


@pytest.mark.parametrize(
    ("full", "small_tmpfs"),
    [("audit-log", "1m"), ("data-folder", "32m")],  # room for SQLite's WAL once space returns
    indirect=["small_tmpfs"],
)
def test_stores_fail_closed_on_a_full_disk_and_resume_when_space_returns(
    small_tmpfs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, full: str
) -> None:
    """Either only the audit log is on the full filesystem, or index and blobs are too."""
    log_path = small_tmpfs / "audit.jsonl"
    data = small_tmpfs if full == "data-folder" else tmp_path
    audit = AuditLog(log_path)
    index = SqlIndex(f"sqlite:///{data / 'index.db'}")
    blobs = FolderBlobStore(data / "blobs", encryption_key=b"k" * 32)
    service = ArchiveService(index, blobs, AuditFanout(audit), lambda p, a: None)
    objects = _objects(60)
    acknowledged: list[str] = []
    refused: list[tuple[str, bytes]] = []
    try:
        with caplog.at_level(logging.INFO):
            for uid, data in objects[:2]:  # the log's last page holds them and room for more
                assert service.store_instance(PRINCIPAL, data).ok
                acknowledged.append(uid)
            filler = fill(small_tmpfs)
            # The log's last page still has room for a few lines; then a line crosses into a
            # page the disk does not have (a short write) and is refused.
            first_refused_at = -1
            for uid, data in objects[2:40]:
                size = log_path.stat().st_size
                result = service.store_instance(PRINCIPAL, data)
                if result.ok:
                    acknowledged.append(uid)
                    continue
                assert result.status == OUT_OF_RESOURCES
                refused.append((uid, data))
                if full == "audit-log":
                    assert log_path.stat().st_size == size  # the log is left as it was
                    first_refused_at = size if first_refused_at < 0 else first_refused_at
            assert refused, "the full disk refused nothing"
            if full == "audit-log":
                # Part of the first refused line fit in the page (a short write), and was cut.
                assert first_refused_at % 4096 != 0
            assert log_path.read_bytes().endswith(b"\n")
            assert verify(log_path).ok
            assert not audit.writable
            for uid, _ in refused:  # refused: neither indexed nor kept as a blob
                assert index.get(uid) is None
                assert uid not in set(blobs.keys())
            # Queries (shorter lines than stores) use up what is left of the page; once one is
            # refused, the same query is refused again and releases nothing, and so is a store.
            query = QueryRequest(QueryRoot.STUDY, Level.STUDY, {})
            for _ in range(50):
                try:
                    list(service.query(PRINCIPAL, query))
                except AuditLogError:
                    break
            else:
                pytest.fail("the audit log kept taking lines on a full disk")
            with pytest.raises(AuditLogError):
                list(service.query(PRINCIPAL, query))
            late = objects[40]
            assert service.store_instance(PRINCIPAL, late[1]).status == OUT_OF_RESOURCES
            refused.append(late)
            filler.unlink()  # space returns: no restart
            for uid, data in [*refused, *objects[41:]]:
                assert service.store_instance(PRINCIPAL, data).ok
                acknowledged.append(uid)
            assert audit.writable
    finally:
        audit.close()
        index.close()
    report = verify(log_path)
    assert report.ok, report.problems
    successes = [r for r in _store_lines(log_path) if r["outcome"] == 0]
    assert sorted(_instance(r) for r in successes) == sorted(acknowledged)
    assert all(r["detail"] == {"result": "inserted"} for r in successes)
    assert set(map(str, blobs.keys())) == set(acknowledged)
    # One error when the log (and the blob store) starts failing, one warning when it recovers.
    for logger in ("pacsguard.archive.audit.log", "pacsguard.archive.service"):
        levels = [r.levelno for r in caplog.records if r.name == logger]
        if logger.endswith("log") or full == "data-folder":
            assert levels == [logging.ERROR, logging.WARNING], logger
        else:
            assert levels == [], logger


def test_a_store_whose_audit_sync_fails_is_refused_and_its_line_is_rewritten_on_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync failing on the audit log only (fault injection: no mountable filesystem fails an
    fsync on demand); the blob store's own fsyncs keep working."""
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog(log_path, retry_interval=0.05)
    index = SqlIndex(f"sqlite:///{tmp_path / 'index.db'}")
    blobs = FolderBlobStore(tmp_path / "blobs", encryption_key=b"k" * 32)
    service = ArchiveService(index, blobs, AuditFanout(audit), lambda p, a: None)
    (uid, data), (second_uid, second) = _objects(2)
    audit_inode = log_path.stat().st_ino
    broken = True
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if broken and os.fstat(fd).st_ino == audit_inode:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        refused = service.store_instance(PRINCIPAL, data)
        assert (refused.status, refused.outcome) == (OUT_OF_RESOURCES, "audit log unavailable")
        assert service.store_instance(PRINCIPAL, second).status == OUT_OF_RESOURCES
        assert index.get(second_uid) is None  # refused at once: the log takes no new line
        broken = False
        deadline = time.monotonic() + 30
        while not audit.writable and time.monotonic() < deadline:
            time.sleep(0.01)
        assert audit.writable  # the syncer rewrote the unsynced line, no restart
        retried = service.store_instance(PRINCIPAL, data)
        assert (retried.status, retried.outcome) == (0, "duplicate-identical")
        assert service.store_instance(PRINCIPAL, second).ok
    finally:
        audit.close()
        index.close()
    assert verify(log_path).ok
    results = [(_instance(r), r["detail"]["result"]) for r in _store_lines(log_path)]  # type: ignore[index]
    # The first line (the row committed while its sync failed) was kept and made durable.
    assert results == [(uid, "inserted"), (uid, "duplicate-identical"), (second_uid, "inserted")]


@pytest.mark.parametrize("small_tmpfs", ["4m"], indirect=True)
def test_an_index_on_a_full_disk_refuses_with_out_of_resources_and_logs_no_patient_data(
    small_tmpfs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the SQLite index (and its WAL) is on the full filesystem: the blob is written, the
    index commit fails with SQLITE_FULL. The answer is 0xA700 (out of room, not 0x0110), the
    blob goes, and the one error logged carries no value of the failed statement."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    index = SqlIndex(f"sqlite:///{small_tmpfs / 'index.db'}")
    blobs = FolderBlobStore(tmp_path / "blobs", encryption_key=b"k" * 32)
    service = ArchiveService(index, blobs, AuditFanout(audit), lambda p, a: None)
    lab = generate_archive(41, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                           instances_per_series=(40, 40))  # fmt: skip
    objects = []
    for path in lab.walk():
        ds: Dataset = build_dataset(*path)
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        objects.append((ds, out.getvalue()))
    try:
        assert service.store_instance(PRINCIPAL, objects[0][1]).ok
        filler = fill(small_tmpfs)
        with caplog.at_level(logging.INFO):
            refused = None
            for ds, data in objects[1:]:
                result = service.store_instance(PRINCIPAL, data)
                if not result.ok:
                    refused = (ds, data, result)
                    break
            assert refused is not None, "the full index disk refused nothing"
        ds, data, result = refused
        assert (result.status, result.outcome) == (OUT_OF_RESOURCES, "index commit failed")
        assert str(ds.SOPInstanceUID) not in set(map(str, blobs.keys()))  # nothing kept
        logged = caplog.text + "".join(
            logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info
        )
        assert "SQLITE_FULL" in logged or "disk is full" in logged  # the error was logged
        for value in (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID, ds.AccessionNumber):
            assert str(value) not in logged
        filler.unlink()
        assert service.store_instance(PRINCIPAL, data).ok  # space is back, no restart
    finally:
        audit.close()
        index.close()
