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
    """An `AuditSink` that hands each event to every configured sink (log, syslog, ...).

    `emit_deferred` writes to every sink at once and returns a function that waits until the
    durable ones have synced, so that a caller can overlap that sync with its own (the archive
    overlaps the audit log's fsync with the index commit of a store)."""

    def __init__(self, sinks: Iterable[AuditSink] = ()) -> None:
        self._notifications: Notifications[tuple[AuditEvent, list[Waiter]]] = Notifications("audit")
        for sink in sinks:
            self.add(sink)

    def add(self, sink: AuditSink) -> Callable[[], None]:
        """Subscribe a sink; returns a function that removes it."""

        def deliver(item: tuple[AuditEvent, list[Waiter]]) -> None:
            event, waiters = item
            waiters.append(emit_deferred(sink, event))

        return self._notifications.subscribe(deliver)

    def emit_deferred(self, event: AuditEvent) -> Waiter:
        waiters: list[Waiter] = []
        self._notifications.publish((event, waiters))

        def wait() -> None:
            for waiter in waiters:
                try:
                    waiter()
                except Exception:
                    log.exception("audit: a sink failed to make an event durable")

        return wait

    def emit(self, event: AuditEvent) -> None:
        self.emit_deferred(event)()
