"""`ArchiveService.query` on a real index and audit log: authorized before the index is read,
audited before anything is returned, one stable order paged by offset/limit under the
configured cap, and typed matches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacsguard.archive.audit.log import AuditLog
from pacsguard.archive.blobs.folder import FolderBlobStore
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.model import Attribute, QueryRequest
from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.archive.service import ArchiveService, Denied, ServiceLimits
from pacsguard.dicom.levels import Level, QueryRoot
from pacsguard.errors import PolicyDenied
from tests.integration.archive.test_index_contract import CORPUS

VIEWER = Principal("VIEWER", "127.0.0.1", AuthMethod.MTLS, None, frozenset({Action.FIND}))
MODALITY = Principal("CT", "127.0.0.1", AuthMethod.MTLS, None, frozenset({Action.STORE}))


def _policy(principal: Principal, action: Action) -> None:
    if action not in principal.permissions:
        raise PolicyDenied(principal.ae_title, action.value, "not in its permissions")


class CountingIndex(SqlIndex):
    """The real index, counting how often it is asked to find."""

    finds = 0

    def find(self, request: QueryRequest) -> Iterator[dict[str, str]]:
        self.finds += 1
        return super().find(request)


class Parts:
    def __init__(self, root: Path, cap: int) -> None:
        self.index = CountingIndex(f"sqlite:///{root / 'index.db'}")
        for record in CORPUS:
            self.index.add(record)
        self.audit = AuditLog(root / "audit.jsonl")
        blobs = FolderBlobStore(root / "blobs")
        limits = ServiceLimits(max_query_results=cap)
        self.service = ArchiveService(self.index, blobs, self.audit, _policy, limits)

    def lines(self, event: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.audit.path.read_bytes().splitlines()]
        return [line for line in found if line["event"] == event]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    made = Parts(tmp_path, cap=3)
    yield made
    made.audit.close()
    made.index.close()


def _request(offset: int = 0, limit: int = 1000, **keys: str) -> QueryRequest:
    return QueryRequest(QueryRoot.PATIENT, Level.IMAGE, keys, limit=limit, offset=offset)


def test_a_denied_query_reads_nothing_and_is_audited(parts: Parts) -> None:
    with pytest.raises(Denied):
        parts.service.query(MODALITY, _request())  # raised at the call, not on iteration
    assert parts.index.finds == 0
    assert [line["detail"] for line in parts.lines("policy-denial")] == [{"action": "find"}]
    assert parts.lines("query") == []


def test_pages_follow_one_order_under_the_cap(parts: Parts) -> None:
    order = [r.sop_instance_uid for r in CORPUS]
    first = parts.service.query(VIEWER, _request())  # no limit asked: the cap (3) applies
    assert [m.get("SOPInstanceUID") for m in first] == [
        Attribute("SOPInstanceUID", 0x00080018, "UI", (uid,)) for uid in order[:3]
    ]
    assert first.more
    pages = [parts.service.query(VIEWER, _request(offset=o, limit=2)) for o in range(0, 8, 2)]
    assert [m.get("SOPInstanceUID").text for p in pages for m in p] == order  # type: ignore[union-attr]
    assert [p.more for p in pages] == [True, True, True, False]
    details = [line["detail"] for line in parts.lines("query")]
    assert details[0] == {"results": 3, "capped": True}
    assert details[-1] == {"results": 2, "capped": False, "offset": 6}


def test_matches_are_typed(parts: Parts) -> None:
    request = QueryRequest(
        QueryRoot.STUDY,
        Level.STUDY,
        {
            "PatientName": "",
            "StudyDate": "",
            "ModalitiesInStudy": "",
            "NumberOfStudyRelatedInstances": "",
            "StudyDescription": "",
            "QueryRetrieveLevel": "STUDY",
        },
    )
    (study1, *_) = parts.service.query(VIEWER, request)
    assert study1.level is Level.STUDY
    assert study1.get("QueryRetrieveLevel") is None  # the response's own, not the match's
    assert study1.get("PatientName") == Attribute("PatientName", 0x00100010, "PN", ("Doe^John",))
    assert study1.get("StudyDate") == Attribute("StudyDate", 0x00080020, "DA", ("20200105",))
    modalities = study1.get("ModalitiesInStudy")
    assert modalities == Attribute("ModalitiesInStudy", 0x00080061, "CS", ("CT", "SR"))
    count = study1.get("NumberOfStudyRelatedInstances")
    assert count == Attribute("NumberOfStudyRelatedInstances", 0x00201208, "IS", (4,))
    assert study1.character_set == ()
    hans = parts.service.query(VIEWER, _request(PatientName="M*", limit=1))
    (match,) = hans
    assert match.character_set == ("ISO_IR 192",)  # Müller
