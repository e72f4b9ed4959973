from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.log import (
    GENESIS,
    AuditLog,
    canonical,
    head_path,
    read_events,
    verify,
)
from pacsguard.errors import AuditLogError


class Ticks:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def event(n: int, outcome: EventOutcome = EventOutcome.SUCCESS) -> AuditEvent:
    return AuditEvent(
        EventType.QUERY,
        EventAction.EXECUTE,
        outcome,
        (Participant(ae_title="VIEWER", address="198.51.100.2", user="alice"),),
        objects=(("query", "STUDY"),),
        detail={"n": n, "matches": n * 2},
    )


def write_log(path: Path, count: int = 5) -> None:
    with AuditLog(path, clock=Ticks()) as log:
        for n in range(1, count + 1):
            log.append(event(n))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def problem_lines(path: Path) -> list[int]:
    return [p.line for p in verify(path).problems]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    write_log(path)
    return path


def test_lines_are_chained_and_canonical(log_path: Path) -> None:
    records = [json.loads(line) for line in lines_of(log_path)]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    first = records[0]
    body = {k: v for k, v in first.items() if k != "hash"}
    assert first["hash"] == hashlib.sha256(canonical(body)).hexdigest()
    assert first["time"] == "2025-03-01T12:00:01.000000Z"
    assert first["event"] == "query"
    assert first["participants"] == [
        {"ae_title": "VIEWER", "address": "198.51.100.2", "user": "alice", "requestor": True}
    ]
    assert lines_of(log_path)[0] == canonical(first) + b"\n"


def test_intact_log_verifies(log_path: Path) -> None:
    report = verify(log_path)
    assert report.ok, report.problems
    assert (report.lines, report.last_seq) == (5, 5)
    assert report.first_bad_line is None


def test_read_events_round_trips(log_path: Path) -> None:
    logged = list(read_events(log_path))
    assert [item.seq for item in logged] == [1, 2, 3, 4, 5]
    assert logged[2].event == event(3)
    assert logged[0].time == datetime(2025, 3, 1, 12, 0, 1, tzinfo=UTC)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_edited_line_is_named(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[2] = lines[2].replace(b'"outcome":0', b'"outcome":12')
    _rewrite(log_path, lines)
    report = verify(log_path)
    assert not report.ok
    assert problem_lines(log_path) == [3]
    assert "edited" in str(report.problems[0])


def test_edit_with_recomputed_hash_breaks_the_next_link(log_path: Path) -> None:
    lines = lines_of(log_path)
    record = json.loads(lines[2])
    record["detail"]["matches"] = 0
    record["hash"] = hashlib.sha256(
        canonical({k: v for k, v in record.items() if k != "hash"})
    ).hexdigest()
    lines[2] = canonical(record) + b"\n"
    _rewrite(log_path, lines)
    report = verify(log_path)
    assert problem_lines(log_path) == [4]
    assert "line 3" in report.problems[0].message


def test_whitespace_only_edit_is_detected(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[1] = lines[1].replace(b'"seq":2', b'"seq": 2')
    _rewrite(log_path, lines)
    assert problem_lines(log_path) == [2]


def test_deleted_line_is_named(log_path: Path) -> None:
    lines = lines_of(log_path)
    del lines[2]
    _rewrite(log_path, lines)
    report = verify(log_path)
    assert problem_lines(log_path) == [3]
    assert "deleted" in report.problems[0].message


def test_deleted_first_line_is_detected(log_path: Path) -> None:
    _rewrite(log_path, lines_of(log_path)[1:])
    assert problem_lines(log_path) == [1]


def test_swapped_neighbours_are_named(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(log_path, lines)
    report = verify(log_path)
    assert problem_lines(log_path) == [2, 3]
    assert "reordered" in report.problems[1].message


def test_distant_swap_is_named_where_it_starts(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[1], lines[3] = lines[3], lines[1]
    _rewrite(log_path, lines)
    report = verify(log_path)
    assert report.first_bad_line == 2
    assert problem_lines(log_path) == [2, 3, 4]  # seq 1, 4, 3, 2, 5: line 5 is in place


def test_truncated_tail_is_detected(log_path: Path) -> None:
    _rewrite(log_path, lines_of(log_path)[:3])
    report = verify(log_path)
    assert not report.ok
    assert problem_lines(log_path) == [4]
    assert "2 line(s) cut off the end" in report.problems[0].message


def test_line_cut_in_the_middle_is_detected(log_path: Path) -> None:
    data = log_path.read_bytes()
    log_path.write_bytes(data[: len(data) - 20])
    report = verify(log_path)
    assert 5 in problem_lines(log_path)
    assert any("incomplete last line" in p.message for p in report.problems)


def test_missing_head_is_reported(log_path: Path) -> None:
    head_path(log_path).unlink()
    assert problem_lines(log_path) == [5]


def test_garbage_line_is_named(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[1] = b"not json at all\n"
    _rewrite(log_path, lines)
    assert problem_lines(log_path) == [2]


def test_reopening_continues_the_chain(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        logged = log.append(event(6))
    assert logged.seq == 6
    assert verify(log_path).ok
    assert json.loads(lines_of(log_path)[5])["prev"] == json.loads(lines_of(log_path)[4])["hash"]


def test_opening_a_truncated_log_is_refused(log_path: Path) -> None:
    _rewrite(log_path, lines_of(log_path)[:3])
    with pytest.raises(AuditLogError, match="cut off"):
        AuditLog(log_path)


def test_a_durable_line_that_lost_its_end_is_never_cut(log_path: Path) -> None:
    log_path.write_bytes(log_path.read_bytes()[:-5])  # the head says line 5 was synced
    with pytest.raises(AuditLogError, match="incomplete line"):
        AuditLog(log_path)


def _torn_sixth_line(log_path: Path, keep: int) -> bytes:
    """The first `keep` bytes of the line a sixth append would write (a full disk mid-write)."""
    copy = log_path.with_name("copy.jsonl")
    copy.write_bytes(log_path.read_bytes())
    head_path(copy).write_bytes(head_path(log_path).read_bytes())
    with AuditLog(copy, clock=Ticks()) as log:
        log.append(event(6))
    sixth = lines_of(copy)[5]
    with log_path.open("ab") as f:
        f.write(sixth[:keep])
    return sixth


def test_a_torn_last_line_is_cut_at_open_when_every_line_before_it_verifies(
    log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = log_path.read_bytes()
    _torn_sixth_line(log_path, 40)
    with caplog.at_level(logging.WARNING, logger="pacsguard.archive.audit.log"):
        log = AuditLog(log_path)
    assert log_path.read_bytes() == before
    assert any("cut off an incomplete last line" in r.getMessage() for r in caplog.records)
    with log:
        assert log.append(event(7)).seq == 6
    assert verify(log_path).ok


def test_a_whole_record_missing_only_its_newline_is_kept(log_path: Path) -> None:
    sixth = _torn_sixth_line(log_path, -1)
    with AuditLog(log_path) as log:
        assert log.append(event(7)).seq == 7
    assert lines_of(log_path)[5] == sixth
    assert verify(log_path).ok


def test_a_torn_line_in_the_middle_is_never_dropped(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[2] = lines[2][:30] + b"\n"
    _rewrite(log_path, lines)
    with log_path.open("ab") as f:
        f.write(b'{"seq":6')
    with pytest.raises(AuditLogError, match="line 3"):
        AuditLog(log_path)
    assert log_path.read_bytes().endswith(b'{"seq":6')  # nothing cut


class FlakyDisk:
    """os.fsync that fails with EIO while `broken` is set: fault injection for what a real
    disk does rarely and on no filesystem a test can mount (ENOSPC on write is tested on a
    real full tmpfs in tests/integration/archive/test_audit_full_disk.py)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.broken = threading.Event()
        self.failures = 0
        real = os.fsync

        def fsync(fd: int) -> None:
            if self.broken.is_set():
                self.failures += 1
                raise OSError(5, "Input/output error")
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def test_the_syncer_survives_a_failed_fsync_and_rewrites_the_unsynced_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log_path = tmp_path / "audit.jsonl"
    disk = FlakyDisk(monkeypatch)
    with (
        caplog.at_level(logging.WARNING, logger="pacsguard.archive.audit.log"),
        AuditLog(log_path, retry_interval=0.05) as log,
    ):
        log.append(event(1))
        disk.broken.set()
        with pytest.raises(AuditLogError, match="fsync failed"):
            log.append(event(2))
        assert not log.writable
        for n in range(3, 6):  # refused at once while the disk fails: no line, no wait
            with pytest.raises(AuditLogError, match="refused"):
                log.append(event(n))
        deadline = time.monotonic() + 30
        while disk.failures < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert disk.failures >= 3  # the syncer kept retrying
        disk.broken.clear()
        deadline = time.monotonic() + 30
        while not log.writable and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.writable  # recovered without reopening
        assert log.append(event(6)).seq == 3
    assert [e.event.detail["n"] for e in read_events(log_path)] == [1, 2, 6]
    assert verify(log_path).ok
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    recovered = [r for r in caplog.records if "synced again" in r.getMessage()]
    assert len(errors) == 1 and "cannot be written" in errors[0].getMessage()
    assert len(recovered) == 1


def test_second_writer_is_refused(log_path: Path) -> None:
    with AuditLog(log_path), pytest.raises(AuditLogError, match="another process"):
        AuditLog(log_path)


def test_appends_from_many_threads_stay_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:

        def work(offset: int) -> None:
            for n in range(25):
                log.emit(event(offset * 100 + n))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    report = verify(path)
    assert report.ok, report.problems
    assert report.lines == 200
    details = sorted(item.event.detail["n"] for item in read_events(path))
    assert details == sorted(i * 100 + n for i in range(8) for n in range(25))


def test_log_file_is_private(log_path: Path) -> None:
    assert log_path.stat().st_mode & 0o777 == 0o600


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.close()
    with pytest.raises(AuditLogError, match="closed"):
        log.append(event(1))


def test_head_is_rewritten_in_place_and_a_fresh_log_verifies(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    AuditLog(log_path).close()
    assert verify(log_path).ok  # empty log, empty head
    with AuditLog(log_path) as log:
        for _ in range(3):
            log.emit(event(1))
    head = head_path(log_path).read_bytes()
    assert len(head) == 128 and head.endswith(b"\n")
    assert json.loads(head)["seq"] == 3
    assert verify(log_path).ok


def test_concurrent_writers_share_fsyncs_and_the_chain_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "audit.jsonl"
    syncs: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        syncs.append(fd)
        time.sleep(0.005)  # a disk slow enough that writers pile up behind one sync
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    with AuditLog(log_path) as log:

        def write(n: int) -> None:
            for i in range(25):
                log.append(event(n * 100 + i))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    report = verify(log_path)
    assert report.ok and report.last_seq == 200
    assert len(syncs) < 200  # group commit: fewer syncs than events


def test_deferred_emit_is_durable_only_when_waited_for_and_the_head_never_leads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "audit.jsonl"
    release = threading.Event()
    real_fsync = os.fsync

    def held_fsync(fd: int) -> None:
        assert release.wait(timeout=30)
        real_fsync(fd)

    with AuditLog(log_path) as log:
        log.append(event(1))
        monkeypatch.setattr(os, "fsync", held_fsync)
        wait = log.emit_deferred(event(2))
        time.sleep(0.05)
        assert json.loads(head_path(log_path).read_bytes())["seq"] == 1  # line 2 not synced
        assert len(lines_of(log_path)) == 2  # but written
        release.set()
        wait()
        assert json.loads(head_path(log_path).read_bytes())["seq"] == 2
    assert verify(log_path).ok


def test_a_failed_fsync_is_reported_to_the_waiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "audit.jsonl"

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    log = AuditLog(log_path)
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(AuditLogError, match="fsync failed"):
        log.append(event(1))
    log.close()
