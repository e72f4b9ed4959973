"""`ArchiveService.store_instance` on a real index, blob store and audit log: outcomes, the
audit trail of each, and a failed index commit after the audit line was written."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacsguard.archive.audit.log import AuditLog
from pacsguard.archive.blobs.folder import FolderBlobStore
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.model import AddOutcome, InstanceRecord
from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.archive.service import ArchiveService
from pacsguard.lab.synth import build_dataset, generate_archive

PRINCIPAL = Principal("MODALITY", "127.0.0.1", AuthMethod.ADDRESS, None, frozenset(Action))
ARCHIVE = generate_archive(11, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                           instances_per_series=(3, 3))  # fmt: skip


def _part10(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _datasets() -> list[Dataset]:
    found = []
    for patient, study, one_series, instance in ARCHIVE.walk():
        ds = build_dataset(patient, study, one_series, instance)
        ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
        ds.PixelData = b"\x00\x01" * 4
        found.append(ds)
    return found


class Parts:
    def __init__(self, root: Path) -> None:
        self.index = SqlIndex(f"sqlite:///{root / 'index.db'}")
        self.blobs = FolderBlobStore(root / "blobs", encryption_key=b"k" * 32)
        self.audit = AuditLog(root / "audit.jsonl")
        self.service = ArchiveService(self.index, self.blobs, self.audit, lambda p, a: None)

    def events(self) -> list[dict[str, Any]]:
        lines = self.audit.path.read_bytes().splitlines()
        return [json.loads(line) for line in lines if json.loads(line)["event"] == "store"]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    made = Parts(tmp_path)
    yield made
    made.audit.close()
    made.index.close()


def test_new_duplicate_and_conflicting_instances(parts: Parts, tmp_path: Path) -> None:
    first, second, _ = _datasets()
    data = _part10(first)
    assert parts.service.store_instance(PRINCIPAL, data).status == 0x0000
    assert parts.service.store_instance(PRINCIPAL, data).outcome == "duplicate-identical"
    changed = _datasets()[0]
    changed.InstanceNumber = 99
    refused = parts.service.store_instance(PRINCIPAL, _part10(changed))
    assert refused.status == 0x0111
    with parts.blobs.open(first.SOPInstanceUID) as stream:
        assert stream.read() == data  # the first copy stays
    path = tmp_path / "large.dcm"  # a spilled object arrives as a file: pydicom reads it
    path.write_bytes(_part10(second))
    assert parts.service.store_instance(PRINCIPAL, path).ok
    assert parts.index.get(second.SOPInstanceUID) is not None
    results = [e["detail"]["result"] for e in parts.events()]
    assert results == ["inserted", "duplicate-identical", "duplicate-conflict", "inserted"]


def test_undecodable_and_mismatched_objects_are_refused_and_audited(parts: Parts) -> None:
    assert parts.service.store_instance(PRINCIPAL, b"\x00" * 200).status == 0xC000
    ds = _datasets()[0]
    mismatch = parts.service.store_instance(
        PRINCIPAL, _part10(ds), affected_sop_instance_uid="1.2.3.4"
    )
    assert mismatch.status == 0xA900
    assert [e["outcome"] for e in parts.events()] == [4, 4]  # minor failures
    assert list(parts.blobs.keys()) == []


def test_a_failed_index_commit_is_audited_after_the_success_line(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add = parts.index.add

    def add_then_fail(
        record: InstanceRecord, *, before_commit: Callable[[AddOutcome], None] | None = None
    ) -> AddOutcome:
        assert before_commit is not None
        before_commit(AddOutcome.INSERTED)  # the row is written, the audit line too ...
        raise OSError(28, "No space left on device")  # ... and then the commit fails

    monkeypatch.setattr(parts.index, "add", add_then_fail)
    ds = _datasets()[0]
    failed = parts.service.store_instance(PRINCIPAL, _part10(ds))
    assert (failed.status, failed.outcome) == (0x0110, "index unavailable; not stored, retry later")
    monkeypatch.setattr(parts.index, "add", real_add)
    assert list(parts.blobs.keys()) == []  # no orphan left behind
    assert parts.service.store_instance(PRINCIPAL, _part10(ds)).ok  # a retry stores it
    assert [(e["detail"]["result"], e["outcome"]) for e in parts.events()] == [
        ("inserted", 0),
        ("index commit failed", 8),
        ("inserted", 0),
    ]
