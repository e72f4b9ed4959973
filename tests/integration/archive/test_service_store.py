"""`ArchiveService.store_instance` on a real index, blob store and audit log: outcomes, the
audit trail of each, and a failed index commit after the audit line was written."""

from __future__ import annotations

import errno
import json
import os
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
from pacsguard.archive.staging import StagedWriter, StagingArea
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
    path = tmp_path / "large.dcm"  # an object may arrive as a file: pydicom reads it
    path.write_bytes(_part10(second))
    assert parts.service.store_instance(PRINCIPAL, path).ok
    assert parts.index.get(second.SOPInstanceUID) is not None
    results = [e["detail"]["result"] for e in parts.events()]
    assert results == ["inserted", "duplicate-identical", "duplicate-conflict", "inserted"]


def test_a_staged_object_is_read_through_its_encryption(parts: Parts, tmp_path: Path) -> None:
    *_, third = _datasets()
    data = _part10(third)
    writer = StagingArea(tmp_path / "tmp").create()
    for n in range(0, len(data), 100):  # as fragments arrive
        writer.write(data[n : n + 100])
    staged = writer.finish()
    try:
        assert parts.service.store_instance(PRINCIPAL, staged).ok
        assert parts.service.store_instance(PRINCIPAL, staged).outcome == "duplicate-identical"
    finally:
        staged.discard()
    with parts.blobs.open(third.SOPInstanceUID) as stream:
        assert stream.read() == data


def test_an_object_that_could_not_be_staged_is_refused_out_of_resources(parts: Parts) -> None:
    writer = StagedWriter(os.open("/dev/full", os.O_RDWR))  # every write: ENOSPC
    data = _part10(_datasets()[0])
    writer.write(data)
    writer.write(b"\x00" * (2 << 20))  # past the write buffer: the disk is full
    staged = writer.finish()
    try:
        with pytest.raises(OSError, match="could not be staged"):
            staged.size  # noqa: B018
        refused = parts.service.store_instance(PRINCIPAL, staged)
    finally:
        staged.discard()
    assert (refused.status, refused.outcome) == (0xA700, "received data missing")
    assert [e["outcome"] for e in parts.events()] == [4]  # audited as a minor failure
    assert list(parts.index.all_blob_keys()) == []


def test_undecodable_and_mismatched_objects_are_refused_and_audited(parts: Parts) -> None:
    assert parts.service.store_instance(PRINCIPAL, b"\x00" * 200).status == 0xC000
    ds = _datasets()[0]
    mismatch = parts.service.store_instance(
        PRINCIPAL, _part10(ds), affected_sop_instance_uid="1.2.3.4"
    )
    assert mismatch.status == 0xA900
    assert [e["outcome"] for e in parts.events()] == [4, 4]  # minor failures
    assert list(parts.blobs.keys()) == []


@pytest.mark.parametrize(
    ("error", "answer"),
    [
        pytest.param(
            OSError(errno.ENOSPC, "No space left on device"),
            (0xA700, "index commit failed"),
            id="full-disk",
        ),
        pytest.param(
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            (0x0110, "index unavailable; not stored, retry later"),
            id="index-lost",
        ),
    ],
)
def test_a_failed_index_commit_is_audited_after_the_success_line(
    parts: Parts, monkeypatch: pytest.MonkeyPatch, error: OSError, answer: tuple[int, str]
) -> None:
    """Out of room is "out of resources" (0xA700); an index that went away is a processing
    failure (0x0110). Either way nothing is kept and the store can be retried."""
    real_add = parts.index.add

    def add_then_fail(
        record: InstanceRecord, *, before_commit: Callable[[AddOutcome], None] | None = None
    ) -> AddOutcome:
        assert before_commit is not None
        before_commit(AddOutcome.INSERTED)  # the row is written, the audit line too ...
        raise error  # ... and then the commit fails

    monkeypatch.setattr(parts.index, "add", add_then_fail)
    ds = _datasets()[0]
    failed = parts.service.store_instance(PRINCIPAL, _part10(ds))
    assert (failed.status, failed.outcome) == answer
    monkeypatch.setattr(parts.index, "add", real_add)
    assert list(parts.blobs.keys()) == []  # no orphan left behind
    assert parts.service.store_instance(PRINCIPAL, _part10(ds)).ok  # a retry stores it
    assert [(e["detail"]["result"], e["outcome"]) for e in parts.events()] == [
        ("inserted", 0),
        ("index commit failed", 8),
        ("inserted", 0),
    ]


@pytest.mark.parametrize("as_file", [False, True], ids=["bytes", "file"])
@pytest.mark.parametrize(
    ("charset", "name", "referring"),
    [
        pytest.param(None, "M\u00fcller^J\u00fcrgen", "Doe^A\\Roe^B", id="undeclared"),
        pytest.param("ISO_IR 100", "M\u00fcller^J\u00fcrgen", "Sch\u00f6n^A\\Roe^B", id="latin1"),
        pytest.param("ISO_IR 192", "Wang^XiaoDong=\u738b^\u5c0f\u6771", "", id="utf8"),
        pytest.param(
            ["", "ISO 2022 IR 87"],
            "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
            "Suzuki^Ichiro=\u9234\u6728^\u4e00\u90ce\\Sato^Jiro",
            id="iso2022-ir87",
        ),
    ],
)
def test_text_in_any_character_set_is_indexed_as_unicode(
    parts: Parts,
    tmp_path: Path,
    as_file: bool,
    charset: str | list[str] | None,
    name: str,
    referring: str,
) -> None:
    """Whichever path reads the object (fast reader for bytes in a plain charset, pydicom for
    files and for code extensions such as ISO 2022 IR 87), the index holds the same Unicode
    text; a multi-valued name is kept with its "\\" separator, as the fast reader keeps it."""
    ds = _datasets()[0]
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.ReferringPhysicianName = referring.split("\\") if "\\" in referring else referring
    data = _part10(ds)
    source: Path | bytes = data
    if as_file:
        source = tmp_path / "object.dcm"
        source.write_bytes(data)
    assert parts.service.store_instance(PRINCIPAL, source).ok
    record = parts.index.get(ds.SOPInstanceUID)
    assert record is not None
    assert (record.patient_name, record.referring_physician_name) == (name, referring)
