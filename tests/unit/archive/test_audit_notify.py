from __future__ import annotations

import logging

import pytest

from pacsguard.archive.audit.events import AuditEvent, EventAction, EventOutcome, EventType
from pacsguard.archive.audit.notify import AuditFanout, Notifications

EVENT = AuditEvent(EventType.QUERY, EventAction.EXECUTE, EventOutcome.SUCCESS)


class Recorder:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)


class Broken:
    def emit(self, event: AuditEvent) -> None:
        raise OSError("disk full")


def test_a_failing_sink_is_logged_and_the_others_still_get_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, last = Recorder(), Recorder()
    fanout = AuditFanout([first, Broken(), last])
    with caplog.at_level(logging.ERROR, logger="pacsguard.archive.audit.notify"):
        fanout.emit(EVENT)
    assert first.events == [EVENT]
    assert last.events == [EVENT]
    assert any("disk full" in (r.exc_text or "") for r in caplog.records)


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
    fanout = AuditFanout()
    remove = fanout.add(recorder)
    fanout.emit(EVENT)
    remove()
    fanout.emit(EVENT)
    assert recorder.events == [EVENT]
