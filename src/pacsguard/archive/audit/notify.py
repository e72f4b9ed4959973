"""Notifications: many subscribers, and one failing subscriber never stops the work.

The other kind of hook, an intervention (exactly one handler, an exception means "deny"), lives
where the decision is made: `pacsguard.archive.security.gate.Gate(intervention=...)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from pacsguard.archive.audit.events import AuditEvent, AuditSink
from pacsguard.archive.audit.patients import LEGACY_PATIENT
from pacsguard.errors import AuditLogError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Notifications(Generic[T]):
    """Fan a value out to every subscriber; a subscriber's exception is logged and swallowed."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._subscribers: list[Callable[[T], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Callable[[T], None]) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it again."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, value: T) -> int:
        """Deliver `value` to every subscriber in order; returns how many of them failed."""
        with self._lock:
            subscribers = tuple(self._subscribers)
        failed = 0
        for subscriber in subscribers:
            try:
                subscriber(value)
            except Exception:
                failed += 1
                log.exception(
                    "%s: subscriber %r failed; the others still ran", self._name, subscriber
                )
        return failed


Waiter = Callable[[], None]


def _done() -> None:
    return None


def emit_deferred(sink: AuditSink, event: AuditEvent) -> Waiter:
    """Write `event` through `sink` now; the result waits until it is durable. A sink that
    cannot defer (syslog, a test recorder) simply emits at once."""
    deferred = getattr(sink, "emit_deferred", None)
    if callable(deferred):
        waiter: Waiter = deferred(event)
        return waiter
    sink.emit(event)
    return _done


class AuditFanout:
    """The archive's `AuditSink`: one primary log that is part of every operation, and copies.

    The primary (the hash-chained `AuditLog`) fails closed: its errors propagate, so that the
    operation being audited fails too (docs: ARCHITECTURE, "Audit"). Notification sinks (syslog
    ...) get the event once the primary has taken it; a failing one is logged and swallowed.
    `emit_deferred` returns a function that waits until the primary has synced the event, so
    that a caller can overlap that sync with its own (a store overlaps it with the index commit).
    """

    def __init__(self, primary: AuditSink, notifications: Iterable[AuditSink] = ()) -> None:
        self._primary = primary
        self._notifications: Notifications[AuditEvent] = Notifications("audit")
        for sink in notifications:
            self.add(sink)

    def add(self, sink: AuditSink) -> Callable[[], None]:
        """Subscribe a notification sink; returns a function that removes it."""
        return self._notifications.subscribe(sink.emit)

    def emit_deferred(self, event: AuditEvent) -> Waiter:
        """Write `event` to the primary (its errors propagate), then notify the copies. An
        event that names a patient by Patient ID in clear is refused (AuditLogError, so the
        operation fails): patients are named by reference (`audit.patients`)."""
        if any(kind == LEGACY_PATIENT for kind, _ in event.objects):
            raise AuditLogError(
                "an audit event names a patient by Patient ID in clear; refused (events name "
                "patients by reference: pacsguard.archive.audit.patients)"
            )
        waiter = emit_deferred(self._primary, event)
        self._notifications.publish(event)
        return waiter

    def emit(self, event: AuditEvent) -> None:
        self.emit_deferred(event)()
