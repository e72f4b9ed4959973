from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from pacsguard.archive.audit.events import AuditEvent, EventAction, EventOutcome, EventType
from pacsguard.archive.audit.notify import AuditFanout, Notifications
from pacsguard.errors import AuditLogError

EVENT = AuditEvent(EventType.QUERY, EventAction.EXECUTE, EventOutcome.SUCCESS)


class Recorder:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)


class Broken:
    def emit(self, event: AuditEvent) -> None:
        raise OSError("disk full")


def test_a_failing_notification_sink_is_logged_and_the_others_still_get_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, first, last = Recorder(), Recorder(), Recorder()
    fanout = AuditFanout(primary, [first, Broken(), last])
    with caplog.at_level(logging.ERROR, logger="pacsguard.archive.audit.notify"):
        fanout.emit(EVENT)
    assert primary.events == first.events == last.events == [EVENT]
    assert any("disk full" in (r.exc_text or "") for r in caplog.records)


def test_a_failing_primary_fails_the_operation_and_sends_no_copies() -> None:
    copy = Recorder()
    fanout = AuditFanout(Broken(), [copy])
    with pytest.raises(OSError, match="disk full"):
        fanout.emit(EVENT)
    assert copy.events == []


class Unsynced(Recorder):
    """A primary whose lines are written but cannot be made durable."""

    def emit_deferred(self, event: AuditEvent) -> Callable[[], None]:
        self.events.append(event)

        def wait() -> None:
            raise AuditLogError("fsync failed")

        return wait


def test_a_primary_that_cannot_sync_fails_the_waiter() -> None:
    primary, copy = Unsynced(), Recorder()
    fanout = AuditFanout(primary, [copy])
    wait = fanout.emit_deferred(EVENT)
    assert copy.events == [EVENT]  # the copy is a notification of what was written
    with pytest.raises(AuditLogError, match="fsync failed"):
        wait()
    with pytest.raises(AuditLogError):
        fanout.emit(EVENT)


def test_publish_counts_failures_and_unsubscribe_works() -> None:
    seen: list[int] = []
    hub: Notifications[int] = Notifications("numbers")
    remove = hub.subscribe(seen.append)
    hub.subscribe(lambda value: 1 // value and None)
    assert hub.publish(0) == 1  # ZeroDivisionError in the second subscriber only
    remove()
    assert hub.publish(5) == 0
    assert seen == [0]


def test_removing_a_sink() -> None:
    recorder = Recorder()
    fanout = AuditFanout(Recorder())
    remove = fanout.add(recorder)
    fanout.emit(EVENT)
    remove()
    fanout.emit(EVENT)
    assert recorder.events == [EVENT]


def test_an_event_naming_a_patient_in_clear_is_refused_and_goes_nowhere() -> None:
    primary, copy = Recorder(), Recorder()
    fanout = AuditFanout(primary, [copy])
    clear = AuditEvent(
        EventType.STORE,
        EventAction.CREATE,
        EventOutcome.SUCCESS,
        objects=(("study", "1.2.3"), ("patient", "PID-77")),
    )
    with pytest.raises(AuditLogError, match="in clear"):
        fanout.emit(clear)
    assert primary.events == copy.events == []
