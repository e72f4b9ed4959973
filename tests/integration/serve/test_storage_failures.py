"""When the index or the blob store fails, every DIMSE request gets its DICOM answer and the
association stays up; nothing is half-stored. Real failures only: the archive's index is a
database on a real PostgreSQL server that stops accepting connections (and drops the open
ones), or holds a lock; the blob store's objects folder is replaced by a file.

Also here: C-FIND answers cut by `find_result_cap`, and C-CANCEL of a C-FIND.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from pacsguard.archive.app import RunningArchive
from pacsguard.archive.fsck import run_fsck
from pacsguard.lab.synth import build_dataset, generate_archive
from tests.integration.archive.conftest import PostgresServer, postgres_server

from ._retrieve_peers import (
    CLIENT_TIMEOUT,
    FIND,
    STUDY,
    UIDS,
    Response,
    assert_still_up,
    cancel_log,
    counts,
    get,
    move,
    requester,
    start_loaded,
    unreachable_destination,
    wait_for_log,
)
from .conftest import StartArchive, free_port
from .test_serve import audit_events

__all__ = ["postgres_server"]  # the session fixture, shared with the index contract tests

#: An instance of another study, stored while the index is down and again once it is back.
LATE = generate_archive(31, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                        instances_per_series=(1, 1))  # fmt: skip


def late_dataset() -> Dataset:
    patient = LATE.patients[0]
    study = patient.studies[0]
    series = study.series[0]
    return build_dataset(patient, study, series, series.instances[0])


@dataclass
class PostgresIndex:
    """One database of the test server, as the archive's index; `outage()` takes it away."""

    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def allow(self, allowed: bool) -> None:
        with self.server.admin() as conn:
            conn.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS {str(allowed).lower()}")
            if not allowed:  # and drop the archive's open connections
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (self.name,),
                )

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.allow(False)
        try:
            yield
        finally:
            self.allow(True)

    def waiting_on_lock(self) -> bool:
        with self.server.admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND wait_event_type = 'Lock'",
                (self.name,),
            ).fetchone()
        return bool(row and row[0])


@pytest.fixture
def pg_index(postgres_server: PostgresServer) -> Iterator[PostgresIndex]:
    database = PostgresIndex(postgres_server, "pacsguard_f" + secrets.token_hex(4))
    with postgres_server.admin() as conn:
        conn.execute(f"CREATE DATABASE {database.name}")
    yield database
    database.allow(True)


def store(archive: RunningArchive, ds: Dataset) -> Dataset:
    """C-STORE one data set on its own association; the response's status data set."""
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT
    endpoint = next(e for e in archive.endpoints if not e.tls)
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        assert status is not None
        assert assoc.is_established  # a failure did not end the association
        return status
    finally:
        assoc.release()


def image_query(**keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = STUDY.study_instance_uid
    query.SOPInstanceUID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def find(assoc: Association, query: Dataset) -> list[Response]:
    responses = list(assoc.send_c_find(query, FIND))
    assert responses and all(status is not None for status, _ in responses)
    return responses


def test_index_outage_answers_every_request_and_stores_nothing_half(
    start: StartArchive, tmp_path: Path, pg_index: PostgresIndex
) -> None:
    archive = start_loaded(
        start,
        tmp_path / "a",
        unreachable_destination("DEST", free_port()),
        **{"storage.index_url": pg_index.url},
    )
    late = late_dataset()
    uid = str(late.SOPInstanceUID)
    with requester(archive) as assoc, pg_index.outage():
        status = store(archive, late)
        assert int(status.Status) == 0x0110
        assert "index unavailable" in str(status.ErrorComment)
        assert not archive.blobs.exists(uid)  # the blob written before the index was dropped
        status, _ = find(assoc, image_query())[-1]
        assert int(status.Status) == 0xA700
        assert "index unavailable" in str(status.ErrorComment)
        for responses in (move(assoc, "DEST"), get(assoc)):
            status, _ = responses[-1]
            assert int(status.Status) == 0xA701
            assert "index unavailable" in str(status.ErrorComment)
        assert_still_up(assoc)
    # The index is back: the same instance stores, index and blobs agree.
    assert int(store(archive, late).Status) == 0x0000
    report = run_fsck(archive.index, archive.blobs, verify_hashes=True)
    assert report.ok and report.checked == len(UIDS) + 1
    results = [
        (e["detail"]["result"], e["outcome"])  # type: ignore[index]
        for e in audit_events(archive)
        if e["event"] == "store"
    ]
    assert results[-2:] == [("index commit failed", 8), ("inserted", 0)]
    retrieves = [e for e in audit_events(archive) if e["event"] == "retrieve"]
    assert [(e["outcome"], e["detail"]) for e in retrieves] == [
        (8, {"action": action, "result": "index unavailable"}) for action in ("move", "get")
    ]
    queries = [e for e in audit_events(archive) if e["event"] == "query"]
    assert [e["outcome"] for e in queries] == [8]


def test_blob_store_failure_is_out_of_resources_and_stores_nothing(
    start: StartArchive, tmp_path: Path
) -> None:
    archive = start_loaded(start, tmp_path / "a")
    objects = archive.blobs.root / "objects"
    aside = archive.blobs.root / "objects.aside"
    objects.rename(aside)
    objects.write_bytes(b"not a directory")  # every blob write now fails (ENOTDIR)
    late = late_dataset()
    try:
        status = store(archive, late)
        assert int(status.Status) == 0xA700
        assert "storage write failed" in str(status.ErrorComment)
        assert archive.index.get(str(late.SOPInstanceUID)) is None
    finally:
        objects.unlink()
        aside.rename(objects)
    assert int(store(archive, late).Status) == 0x0000
    assert run_fsck(archive.index, archive.blobs, verify_hashes=True).ok


def test_find_cut_by_the_result_cap_ends_with_cancel_and_is_audited(
    start: StartArchive, tmp_path: Path
) -> None:
    archive = start_loaded(start, tmp_path / "a", **{"server.find_result_cap": 3})
    with requester(archive) as assoc:
        responses = find(assoc, image_query())
        pending = [r for s, r in responses if int(s.Status) == 0xFF00]
        status, _ = responses[-1]
        assert len(pending) == 3  # four instances match; the cap is three
        assert int(status.Status) == 0xFE00
        assert "more than 3 matches" in str(status.ErrorComment)
        # Exactly as many matches as the cap: a complete answer.
        three = "\\".join(UIDS[:3])
        responses = find(assoc, image_query(SOPInstanceUID=three))
        assert int(responses[-1][0].Status) == 0x0000
        assert len(responses) == 4
        assert_still_up(assoc)
    queries = [e["detail"] for e in audit_events(archive) if e["event"] == "query"]
    assert queries == [{"results": 3, "capped": True}, {"results": 3, "capped": False}]


def test_find_cancel_while_the_query_runs(
    start: StartArchive,
    tmp_path: Path,
    pg_index: PostgresIndex,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The query is held by a table lock until the archive has seen the C-CANCEL: matches
    exist, none is sent, the answer is 0xFE00."""
    cancel_log(caplog)
    archive = start_loaded(start, tmp_path / "a", **{"storage.index_url": pg_index.url})
    with (
        requester(archive) as assoc,
        psycopg.connect(pg_index.server.conninfo(pg_index.name)) as locker,
    ):
        locker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        responses: list[Response] = []
        finder = threading.Thread(target=lambda: responses.extend(find(assoc, image_query())))
        finder.start()
        deadline = time.monotonic() + 30
        while not pg_index.waiting_on_lock():
            assert time.monotonic() < deadline, "the archive's query never reached the lock"
            time.sleep(0.05)
        context_id = next(
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == FIND
        )
        assoc.send_c_cancel(1, context_id)
        wait_for_log(caplog, "C-CANCEL for message 1: stopping")
        locker.rollback()  # the lock goes; the query finds its four matches
        finder.join(CLIENT_TIMEOUT)
        assert [int(s.Status) for s, _ in responses] == [0xFE00]
        assert_still_up(assoc)


def test_retrieve_counts_survive_a_removed_blob(start: StartArchive, tmp_path: Path) -> None:
    """A stored instance whose blob is gone fails its sub-operation only (0xB000)."""
    archive = start_loaded(start, tmp_path / "a")
    (path,) = [p for p in (archive.blobs.root / "objects").rglob(UIDS[0])]
    shutil.move(path, tmp_path / "moved")
    with requester(archive) as assoc:
        status, identifier = get(assoc)[-1]
        assert int(status.Status) == 0xB000
        assert counts(status) == (None, 3, 1, 0)
        assert identifier is not None and str(identifier.FailedSOPInstanceUIDList) == UIDS[0]
        assert_still_up(assoc)
