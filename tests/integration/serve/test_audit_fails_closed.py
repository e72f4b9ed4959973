"""The audit log fails closed through the DIMSE front end, with pynetdicom as the peer: on a real
full filesystem (a small tmpfs the test mounts) and when a C-MOVE is cut off mid-transfer."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacsguard.archive.app import RunningArchive
from pacsguard.archive.audit.log import verify
from pacsguard.lab.synth import build_dataset, generate_archive

from ..full_disk import fill
from .conftest import TESTER, StartArchive, make_data_dir

OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
STORAGE = (CTImageStorage, MRImageStorage)  # what the synthetic lab generates


def _datasets(count: int, seed: int = 31) -> list[Dataset]:
    lab = generate_archive(seed, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                           instances_per_series=(count, count))  # fmt: skip
    return [build_dataset(*path) for path in lab.walk()]


def _client() -> AE:
    ae = AE(ae_title="TESTER")
    for storage in STORAGE:
        ae.add_requested_context(storage, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def _associate(archive: RunningArchive) -> Association:
    endpoint = next(e for e in archive.endpoints if not e.tls)
    return _client().associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")


def _store(assoc: Association, ds: Dataset) -> int:
    status = assoc.send_c_store(ds)
    assert status, "no C-STORE response"
    return int(status.Status)


def _find_statuses(assoc: Association) -> list[int]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    return [
        int(status.Status)
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        if status
    ]


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


class SlowDestination:
    """A real pynetdicom storage SCP on loopback whose C-STORE handler waits to be released,
    so that a C-MOVE sub-operation is in flight for as long as the test wants."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        ae = AE(ae_title="SLOWDEST")
        for storage in STORAGE:
            ae.add_supported_context(storage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        self.arrived.set()
        self.release.wait(timeout=60)
        return 0x0000

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def slow_destination() -> Iterator[SlowDestination]:
    destination = SlowDestination()
    yield destination
    destination.close()


def _with_destination(tmp_path: Path, destination: SlowDestination) -> Path:
    return make_data_dir(
        tmp_path / "data",
        TESTER
        + f"""
[[ae]]
ae_title = "SLOWDEST"
auth = "address"
address = "127.0.0.1"
port = {destination.port}
move_destination = true
permissions = []
""",
    )


def _move_statuses(assoc: Association, study_uid: str) -> list[int]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return [
        int(status.Status)
        for status, _ in assoc.send_c_move(
            query, "SLOWDEST", StudyRootQueryRetrieveInformationModelMove
        )
        if status
    ]


def _use_up_the_log(archive: RunningArchive, assoc: Association) -> None:
    """Open associations, then query, until each is refused: lines that still fit in the log's
    last page use it up, and a refusal writes nothing, so once the (shortest) association and
    query lines are refused, so is every longer line (move-request, store)."""
    for _ in range(50):
        other = _associate(archive)
        if other.is_rejected:
            break
        other.release()
    else:
        pytest.fail("the audit log kept accepting associations on a full disk")
    for _ in range(50):
        if _find_statuses(assoc) == [OUT_OF_RESOURCES]:
            return
    pytest.fail("the audit log kept taking query lines on a full disk")


def test_over_dimse_a_full_audit_disk_refuses_and_the_archive_heals_without_restart(
    start: StartArchive,
    small_tmpfs: Path,
    tmp_path: Path,
    slow_destination: SlowDestination,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_path = small_tmpfs / "audit.jsonl"
    slow_destination.release.set()  # it answers at once here
    archive = start(
        _with_destination(tmp_path, slow_destination), **{"audit.log_path": str(log_path)}
    )
    datasets = _datasets(30)
    acknowledged: list[str] = []
    refused: list[Dataset] = []
    with caplog.at_level(logging.INFO, logger="pacsguard"):
        assoc = _associate(archive)  # its audit line is written while there is room
        assert assoc.is_established
        try:
            assert _store(assoc, datasets[0]) == 0x0000
            acknowledged.append(str(datasets[0].SOPInstanceUID))
            filler = fill(small_tmpfs)
            for ds in datasets[1:20]:
                status = _store(assoc, ds)
                if status == 0x0000:
                    acknowledged.append(str(ds.SOPInstanceUID))
                else:
                    assert status == OUT_OF_RESOURCES
                    refused.append(ds)
            assert refused, "the full disk refused nothing"
            _use_up_the_log(archive, assoc)
            # Now no line fits: queries, associations, moves and stores are all refused.
            assert _find_statuses(assoc) == [OUT_OF_RESOURCES]  # no match released
            other = _associate(archive)  # not accepted without its audit line
            assert other.is_rejected and not other.is_established
            # Transient 2/3/1, not the uniform refusal (1/1/1) a peer provokes: retry later.
            rj = other.acceptor.primitive
            assert rj is not None
            assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 1)
            study = str(datasets[0].StudyInstanceUID)  # nothing sent: 0xA702 refused
            assert _move_statuses(assoc, study) == [OUT_OF_RESOURCES_SUB_OPERATIONS]
            assert not slow_destination.arrived.is_set()
            assert _store(assoc, datasets[20]) == OUT_OF_RESOURCES
            refused.append(datasets[20])
            filler.unlink()  # space returns; the same association goes on
            for ds in [*refused, *datasets[21:]]:
                assert _store(assoc, ds) == 0x0000
                acknowledged.append(str(ds.SOPInstanceUID))
            assert _find_statuses(assoc)[-1] == 0x0000
        finally:
            assoc.release()
        again = _associate(archive)
        assert again.is_established
        again.release()
    archive.stop()
    report = verify(log_path)
    assert report.ok, report.problems
    stored = {
        next(str(ident) for kind, ident in e["objects"] if kind == "instance")  # type: ignore[attr-defined]
        for e in _events(log_path)
        if e["event"] == "store" and e["outcome"] == 0
    }
    assert stored == set(acknowledged)
    assert set(map(str, archive.blobs.keys())) == set(acknowledged)
    ours = [r for r in caplog.records if r.name.startswith("pacsguard")]
    errors = [r for r in ours if r.levelno >= logging.ERROR]
    assert all("cannot be written" in r.getMessage() for r in errors), errors
    # One error when writing starts failing and one warning when it works again, per episode,
    # not one per refused operation (about 30 here). A shorter line (a query's) may still fit
    # after a longer one (a store's, with its patient reference) did not: a second episode.
    assert 1 <= len(errors) <= 2
    assert sum("synced again" in r.getMessage() for r in ours) == len(errors)


def test_a_move_cut_off_mid_transfer_counts_the_sub_operation_in_flight(
    start: StartArchive, tmp_path: Path, slow_destination: SlowDestination
) -> None:
    archive = start(_with_destination(tmp_path, slow_destination))
    datasets = _datasets(4, seed=37)
    assoc = _associate(archive)
    assert assoc.is_established
    for ds in datasets:
        assert _store(assoc, ds) == 0x0000
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = datasets[0].StudyInstanceUID
    responses: list[int] = []

    def move() -> None:
        for status, _ in assoc.send_c_move(
            query, "SLOWDEST", StudyRootQueryRetrieveInformationModelMove
        ):
            if status:
                responses.append(int(status.Status))

    assoc.dimse_timeout = 10  # generous for one response, and how long `move` lingers
    mover = threading.Thread(target=move, daemon=True)
    mover.start()
    assert slow_destination.arrived.wait(timeout=60)  # sub-operation 1 of 4 is in flight
    assoc.abort()  # the requester goes away mid-move
    log_path = archive.settings.audit.log_path
    deadline = time.monotonic() + 60
    retrieves: list[dict[str, object]] = []
    while not retrieves and time.monotonic() < deadline:
        retrieves = [e for e in _events(log_path) if e["event"] == "retrieve"]
        time.sleep(0.05)
    slow_destination.release.set()
    mover.join(timeout=60)  # pynetdicom's C-MOVE waits its DIMSE timeout after the abort
    assert len(retrieves) == 1
    detail = retrieves[0]["detail"]
    assert detail == {"sent": 0, "failed": 0, "in_flight": 1, "not_started": 3}
    assert retrieves[0]["outcome"] == 4  # minor failure: not everything was sent
    requests = [e for e in _events(log_path) if e["event"] == "move-request"]
    assert [e["detail"] for e in requests] == [{"operation": "move", "instances": 4}]
    archive.stop()
    assert verify(log_path).ok
