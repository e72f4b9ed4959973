"""`ArchiveService.retrieve` on a real index, blob store (encrypted) and audit log: the one
retrieve C-GET, C-MOVE and WADO-RS share. Authorization, the instances chosen, reading them
as stored (data set or whole Part 10 file) or converted (pydicom as the oracle), and the two
audit lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from pacsguard.archive.audit.events import AuditEvent, EventType
from pacsguard.archive.audit.log import AuditLog
from pacsguard.archive.blobs.folder import FolderBlobStore
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.archive.service import (
    ArchiveService,
    Denied,
    InstanceData,
    Retrieval,
    deliverable_syntaxes,
)
from pacsguard.dicom import uids
from pacsguard.dicom.levels import Level
from pacsguard.errors import AuditLogError, PolicyDenied
from tests.integration.archive.test_service_store import _datasets, _part10

VIEWER = Principal("VIEWER", "127.0.0.1", AuthMethod.MTLS, None, frozenset({Action.GET}))
EXPLICIT = str(uids.EXPLICIT_VR_LITTLE_ENDIAN)
IMPLICIT = str(uids.IMPLICIT_VR_LITTLE_ENDIAN)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _only_get(principal: Principal, action: Action) -> None:
    if action not in principal.permissions:
        raise PolicyDenied(principal.ae_title, action.value, "not in its permissions")


class Parts:
    def __init__(self, root: Path) -> None:
        self.index = SqlIndex(f"sqlite:///{root / 'index.db'}")
        self.blobs = FolderBlobStore(root / "blobs", encryption_key=b"k" * 32)
        self.audit = AuditLog(root / "audit.jsonl")
        self.service = ArchiveService(self.index, self.blobs, self.audit, _only_get)
        self.stored: dict[str, bytes] = {}
        for ds in _datasets()[:3]:  # one patient, one study, one series of three
            data = _part10(ds)
            admin = Principal("ADMIN", "127.0.0.1", AuthMethod.MTLS, None, frozenset(Action))
            assert self.service.store_instance(admin, data).ok
            self.stored[str(ds.SOPInstanceUID)] = data
        self.series = str(_datasets()[0].SeriesInstanceUID)

    def lines(self, event: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.audit.path.read_bytes().splitlines()]
        return [line for line in found if line["event"] == event]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    made = Parts(tmp_path)
    yield made
    made.audit.close()
    made.index.close()


def _all(data: InstanceData) -> bytes:
    try:
        return data.read()
    finally:
        data.close()


def _opened(retrieval: Retrieval, uid: str, accepted: tuple[str, ...], **kw: bool) -> bytes:
    record = next(r for r in retrieval.records if r.sop_instance_uid == uid)
    data = retrieval.open(record, accepted, **kw)
    assert data is not None
    return _all(data)


def test_retrieve_chooses_audits_and_reads_as_stored(parts: Parts) -> None:
    retrieval = parts.service.retrieve(VIEWER, Action.GET, Level.SERIES, [parts.series])
    assert sorted(r.sop_instance_uid for r in retrieval.records) == sorted(parts.stored)
    (request,) = parts.lines("move-request")
    assert request["detail"] == {"operation": "get", "instances": 3}
    for uid, stored in parts.stored.items():
        assert _opened(retrieval, uid, (EXPLICIT,), part10=True) == stored  # byte for byte
        data_set = _opened(retrieval, uid, (EXPLICIT,))
        assert stored.endswith(data_set) and len(data_set) < len(stored)  # no File Meta
        parsed = read_dataset(BytesIO(data_set), is_implicit_VR=False, is_little_endian=True)
        assert parsed.SOPInstanceUID == uid


def test_uncompressed_instances_are_converted_and_others_refused(parts: Parts) -> None:
    retrieval = parts.service.retrieve(VIEWER, Action.GET, Level.SERIES, [parts.series])
    record = retrieval.records[0]
    assert deliverable_syntaxes(record) == (EXPLICIT, IMPLICIT)
    original = dcmread(BytesIO(parts.stored[record.sop_instance_uid]))
    implicit = _opened(retrieval, record.sop_instance_uid, (JPEG_BASELINE, IMPLICIT))
    parsed = read_dataset(BytesIO(implicit), is_implicit_VR=True, is_little_endian=True)
    assert _same(parsed, original)
    whole = dcmread(BytesIO(_opened(retrieval, record.sop_instance_uid, (IMPLICIT,), part10=True)))
    assert whole.file_meta.TransferSyntaxUID == IMPLICIT and _same(whole, original)
    assert retrieval.open(record, (JPEG_BASELINE,)) is None  # no codec in the archive yet


def _same(one: Dataset, other: Dataset) -> bool:
    return [(e.tag, e.value) for e in one] == [(e.tag, e.value) for e in other]


def test_the_tally_closes_the_retrieve_once(parts: Parts) -> None:
    retrieval = parts.service.retrieve(
        VIEWER, Action.GET, Level.IMAGE, list(parts.stored), destination=None
    )
    assert retrieval.tally.not_started == 3
    retrieval.tally.begin()
    retrieval.tally.end(sent=True)
    retrieval.tally.begin()
    retrieval.tally.end(sent=False)
    retrieval.tally.begin()  # cut off while the third is on its way
    retrieval.finish()
    retrieval.finish()
    (line,) = parts.lines("retrieve")
    assert line["detail"] == {"sent": 1, "failed": 1, "in_flight": 1, "not_started": 0}
    assert line["outcome"] == 4


def test_a_denied_retrieve_is_audited_and_reads_nothing(parts: Parts) -> None:
    finder = Principal("FINDER", "127.0.0.1", AuthMethod.MTLS, None, frozenset({Action.FIND}))
    with pytest.raises(Denied):
        parts.service.retrieve(finder, Action.GET, Level.SERIES, [parts.series])
    (denial,) = parts.lines("policy-denial")
    assert denial["detail"] == {"action": "get"}
    assert parts.lines("move-request") == []


def test_nothing_is_returned_when_the_request_line_cannot_be_written(
    parts: Parts, tmp_path: Path
) -> None:
    class RefusesRequests:
        def emit(self, event: AuditEvent) -> None:
            if event.event is EventType.MOVE_REQUEST:
                raise AuditLogError("disk full")

    service = ArchiveService(parts.index, parts.blobs, RefusesRequests(), _only_get)
    with pytest.raises(AuditLogError):
        service.retrieve(VIEWER, Action.GET, Level.SERIES, [parts.series])
    none = service.retrieve(VIEWER, Action.GET, Level.SERIES, ["1.2.3.4"])
    assert none.records == []  # no match: nothing to request, no line needed
