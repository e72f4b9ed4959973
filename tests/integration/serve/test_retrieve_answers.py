"""C-MOVE and C-GET through the wire: every failure gets its DICOM answer (PS3.4 C.4.2, C.4.3).

The requesting SCU and the C-MOVE destinations are real pynetdicom peers on loopback; the
destinations reject, fail, abort, stall or answer slowly as each test sets them. After every
failure the requesting association must still answer C-ECHO. Index failures (0xA701) are in
test_index_failures.py, against a real PostgreSQL server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt

from pacsguard.archive.app import RunningArchive
from tests.interop.peers import executable, run_tool

from ._retrieve_peers import (
    GET,
    MOVE,
    STUDY,
    UIDS,
    Destination,
    assert_still_up,
    cancel_log,
    counts,
    failed_uids,
    get,
    move,
    requester,
    start_loaded,
    study_identifier,
    unreachable_destination,
    wait_for_log,
)
from .conftest import StartArchive, free_port
from .test_serve import audit_events

DestinationFactory = Callable[..., Destination]


@pytest.fixture
def destination() -> Iterator[DestinationFactory]:
    """destination(aet, calling=None) -> a started Destination, stopped after the test."""
    made: list[Destination] = []

    def make(aet: str, *, calling: list[str] | None = None) -> Destination:
        peer = Destination(aet, calling=calling)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.stop()


def test_move_to_a_destination_that_rejects_or_is_unreachable_fails_every_sub_operation(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    picky = destination("PICKY", calling=["SOMEONEELSE"])  # rejects PACSGUARD's association
    archive = start_loaded(
        start, tmp_path / "a", picky.config() + unreachable_destination("GONE", free_port())
    )
    with requester(archive) as assoc:
        for aet, why in (("PICKY", "rejected the association"), ("GONE", "refused the connect")):
            status, identifier = move(assoc, aet)[-1]
            assert int(status.Status) == 0xA702
            assert counts(status) == (None, 0, 4, 0)
            assert failed_uids(identifier) == UIDS
            assert why in str(status.ErrorComment)
            assert_still_up(assoc)
    assert picky.received == []
    retrieves = [e["detail"] for e in audit_events(archive) if e["event"] == "retrieve"]
    never_reached = {"sent": 0, "failed": 4, "in_flight": 0, "not_started": 0}
    assert retrieves == [never_reached, never_reached]


def test_move_to_a_destination_that_answers_failure(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    dest = destination("FULL")
    archive = start_loaded(start, tmp_path / "a", dest.config())
    with requester(archive) as assoc:
        dest.status = {2: 0xA700}  # out of resources for the second instance only: warning
        responses = move(assoc, "FULL")
        status, identifier = responses[-1]
        assert int(status.Status) == 0xB000
        assert counts(status) == (None, 3, 1, 0)
        assert failed_uids(identifier) == [UIDS[1]]
        assert str(status.ErrorComment) == "1 of 4 sub-operations failed"
        pending = [counts(s) for s, _ in responses[:-1]]
        assert [p[0] for p in pending] == [3, 2, 1]  # Remaining in every Pending response
        dest.status = {n: 0xA700 for n in range(1, 9)}  # every one refused: failure
        dest.received.clear()
        status, identifier = move(assoc, "FULL")[-1]
        assert int(status.Status) == 0xA702
        assert counts(status) == (None, 0, 4, 0)
        assert failed_uids(identifier) == UIDS
        assert_still_up(assoc)


def test_move_destination_that_aborts_mid_transfer(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    dest = destination("VANISH")
    dest.abort_at = 2
    archive = start_loaded(start, tmp_path / "a", dest.config())
    with requester(archive) as assoc:
        status, identifier = move(assoc, "VANISH")[-1]
        assert int(status.Status) == 0xB000
        assert counts(status) == (None, 1, 3, 0)
        assert failed_uids(identifier) == UIDS[1:]
        assert "aborted" in str(status.ErrorComment)
        assert_still_up(assoc)
        # The destination is back (a new association): the same move now completes.
        dest.abort_at = None
        status, identifier = move(assoc, "VANISH")[-1]
        assert int(status.Status) == 0x0000 and identifier is None
        assert counts(status) == (None, 4, 0, 0)


def test_move_destination_that_stops_answering_times_out(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    dest = destination("STALL")
    dest.hold_at = 2  # no answer to the second C-STORE until the test ends
    archive = start_loaded(start, tmp_path / "a", dest.config(), **{"server.dimse_timeout_s": 3.0})
    with requester(archive) as assoc:
        status, identifier = move(assoc, "STALL")[-1]
        assert int(status.Status) == 0xB000
        assert counts(status) == (None, 1, 3, 0)
        assert failed_uids(identifier) == UIDS[1:]
        assert "timed out" in str(status.ErrorComment)
        assert_still_up(assoc)


def test_slow_move_outlasts_the_idle_network_timeout_which_still_applies_afterwards(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    dest = destination("SLOW")
    dest.delay = {n: 1.5 for n in range(1, 5)}  # 6 s in all; each gap longer than the timeout
    archive = start_loaded(
        start,
        tmp_path / "a",
        dest.config(),
        **{"server.network_timeout_s": 1.0, "server.dimse_timeout_s": 30.0},
    )
    with requester(archive) as assoc:
        status, _ = move(assoc, "SLOW")[-1]
        assert int(status.Status) == 0x0000
        assert counts(status) == (None, 4, 0, 0)
        assert dest.received == UIDS  # no C-ECHO now: the 1 s idle timeout has started
        # Idle now: the network timeout ends the association (generous bound).
        for _ in range(300):
            if not assoc.is_established:
                break
            threading.Event().wait(0.1)
        assert not assoc.is_established


def test_move_to_an_unregistered_destination_and_get_with_a_bad_identifier(
    start: StartArchive, tmp_path: Path
) -> None:
    archive = start_loaded(start, tmp_path / "a")
    with requester(archive) as assoc:
        status, identifier = move(assoc, "NOWHERE")[-1]
        assert int(status.Status) == 0xA801
        assert not identifier  # pynetdicom gives an empty data set when there is none
        assert "not registered" in str(status.ErrorComment)
        bad = Dataset()
        bad.StudyInstanceUID = "1.2.3"  # no QueryRetrieveLevel
        status, _ = move(assoc, "NOWHERE", bad)[-1]
        assert int(status.Status) == 0xA801  # the destination is checked first (0xC514: below)
        status, _ = get(assoc, bad)[-1]
        assert int(status.Status) == 0xC413
        assert "QueryRetrieveLevel" in str(status.ErrorComment)
        assert_still_up(assoc)


def test_move_with_an_unusable_identifier_is_refused(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    dest = destination("DEST")
    archive = start_loaded(start, tmp_path / "a", dest.config())
    with requester(archive) as assoc:
        bad = Dataset()
        bad.QueryRetrieveLevel = "SERIES"  # without SeriesInstanceUID
        status, _ = move(assoc, "DEST", bad)[-1]
        assert int(status.Status) == 0xC514
        assert "SeriesInstanceUID" in str(status.ErrorComment)
        assert_still_up(assoc)
    assert dest.received == []


def test_move_cancel_stops_before_the_next_sub_operation(
    start: StartArchive,
    tmp_path: Path,
    destination: DestinationFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancel_log(caplog)
    dest = destination("HOLD")
    dest.hold_at = 1  # the first C-STORE waits until the archive has seen the C-CANCEL
    archive = start_loaded(start, tmp_path / "a", dest.config())
    with requester(archive) as assoc:
        context_id = next(
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == MOVE
        )

        def cancel_when_the_first_arrives() -> None:
            assert dest.arrived.wait(60)
            assoc.send_c_cancel(1, context_id)
            wait_for_log(caplog, "C-CANCEL for message 1: stopping")
            dest.release.set()

        canceller = threading.Thread(target=cancel_when_the_first_arrives)
        canceller.start()
        responses = move(assoc, "HOLD")
        canceller.join(60)
        status, identifier = responses[-1]
        assert int(status.Status) == 0xFE00
        assert counts(status) == (3, 1, 0, 0)  # Remaining: not started because of the cancel
        assert not identifier  # nothing failed: no Failed SOP Instance UID List
        assert dest.received == UIDS[:1]
        assert_still_up(assoc)
    retrieves = [e["detail"] for e in audit_events(archive) if e["event"] == "retrieve"]
    assert retrieves == [{"sent": 1, "failed": 0, "in_flight": 0, "not_started": 3}]


def test_get_cancel_stops_before_the_next_sub_operation(
    start: StartArchive, tmp_path: Path
) -> None:
    archive = start_loaded(start, tmp_path / "a")
    received: list[str] = []

    def cancel_on_first(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:  # the C-CANCEL goes out before this C-STORE-RSP
            context_id = next(
                cx.context_id for cx in event.assoc.accepted_contexts if cx.abstract_syntax == GET
            )
            event.assoc.send_c_cancel(1, context_id)
        return 0x0000

    with requester(archive, on_store=cancel_on_first) as assoc:
        status, identifier = get(assoc)[-1]
        assert int(status.Status) == 0xFE00
        assert counts(status) == (3, 1, 0, 0)
        assert not identifier
        assert received == UIDS[:1]
        assert_still_up(assoc)


def test_get_without_a_storage_role_fails_every_sub_operation(
    start: StartArchive, tmp_path: Path
) -> None:
    archive = start_loaded(start, tmp_path / "a")
    with requester(archive, get_role=False) as assoc:
        status, identifier = get(assoc)[-1]
        assert int(status.Status) == 0xA702
        assert counts(status) == (None, 0, 4, 0)
        assert failed_uids(identifier) == UIDS
        assert_still_up(assoc)


def test_get_with_a_failed_sub_operation_warns(start: StartArchive, tmp_path: Path) -> None:
    archive = start_loaded(start, tmp_path / "a")
    answered: list[str] = []

    def refuse_third(event: evt.Event) -> int:
        answered.append(str(event.request.AffectedSOPInstanceUID))
        return 0xA700 if len(answered) == 3 else 0x0000

    with requester(archive, on_store=refuse_third) as assoc:
        status, identifier = get(assoc)[-1]
        assert int(status.Status) == 0xB000
        assert counts(status) == (None, 3, 1, 0)
        assert failed_uids(identifier) == [UIDS[2]]
        assert_still_up(assoc)


def test_slow_get_outlasts_the_idle_network_timeout(start: StartArchive, tmp_path: Path) -> None:
    archive = start_loaded(
        start,
        tmp_path / "a",
        **{"server.network_timeout_s": 1.0, "server.dimse_timeout_s": 30.0},
    )

    def slowly(event: evt.Event) -> int:
        threading.Event().wait(1.5)  # each C-STORE-RSP later than the network timeout
        return 0x0000

    with requester(archive, on_store=slowly) as assoc:
        status, _ = get(assoc, study_identifier())[-1]
        assert int(status.Status) == 0x0000
        assert counts(status) == (None, 4, 0, 0)  # the association outlived 4 silent gaps


def test_retrieve_audit_counts_a_destination_lost_mid_transfer(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    dest = destination("VANISH")
    dest.abort_at = 3
    archive = start_loaded(start, tmp_path / "a", dest.config())
    with requester(archive) as assoc:
        move(assoc, "VANISH")
    retrieves = [e for e in audit_events(archive) if e["event"] == "retrieve"]
    assert len(retrieves) == 1
    # Two answered, the third in flight when the destination aborted (it may have arrived),
    # the fourth never started.
    assert retrieves[0]["detail"] == {"sent": 2, "failed": 0, "in_flight": 1, "not_started": 1}
    assert retrieves[0]["outcome"] == 4  # minor failure


# -- dcmtk clients see the same answers ------------------------------------------------------------


def dcmtk(archive: RunningArchive, tool: str, *args: str) -> str:
    """Run a dcmtk tool (-d: every response is dumped, Error Comment included) as TESTER."""
    endpoint = next(e for e in archive.endpoints if not e.tls)
    done = run_tool(
        [str(executable(tool)), "-d", "-aet", "TESTER", "-aec", "PACSGUARD", *args,
         endpoint.host, str(endpoint.port)],
        timeout=120,
    )  # fmt: skip
    return done.stdout + done.stderr


def test_dcmtk_movescu_sees_the_warning_and_findscu_the_capped_answer(
    start: StartArchive, tmp_path: Path, destination: DestinationFactory
) -> None:
    dest = destination("VANISH")
    dest.abort_at = 2
    archive = start_loaded(start, tmp_path / "a", dest.config(), **{"server.find_result_cap": 2})
    study = f"StudyInstanceUID={STUDY.study_instance_uid}"
    log = dcmtk(archive, "movescu", "-S", "-aem", "VANISH", "-k", "QueryRetrieveLevel=STUDY",
                "-k", study)  # fmt: skip
    assert "DIMSE Status                  : 0xb000" in log, log[-3000:]
    assert "Failed Suboperations          : 3" in log
    assert "LO [move destination aborted the association]" in log  # the Error Comment
    log = dcmtk(archive, "findscu", "-S", "-k", "QueryRetrieveLevel=IMAGE", "-k", study,
                "-k", "SOPInstanceUID")  # fmt: skip
    assert log.count("0xff00: Pending: Matches are continuing") == 2, log[-3000:]
    assert "0xfe00: Cancel: Matching terminated due to Cancel Request" in log
    assert "LO [more than 2 matches: refine the query" in log
