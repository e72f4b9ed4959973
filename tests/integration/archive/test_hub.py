"""The hub between a supervisor and its workers, on a real Unix socket and a real audit log:
lines of several clients form one chain, a line the log cannot take fails the worker's
operation (AuditLogError), lockout counts and association slots are shared, and a worker
that goes away gives its slots back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.log import AuditLog, read_events, verify
from pacsguard.archive.config import LockoutSettings
from pacsguard.archive.dimse.slots import AssociationSlots
from pacsguard.archive.hub import Hub, HubAuditSink, HubClient, HubLockout, HubSlots
from pacsguard.archive.security.lockout import Lockout
from pacsguard.errors import AuditLogError


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        EventType.STORE,
        EventAction.CREATE,
        EventOutcome.SUCCESS,
        (Participant(ae_title=f"AE{n}", address="127.0.0.1"),),
        (("instance", f"1.2.3.{n}"),),
        {"result": "inserted"},
    )


def test_lines_from_several_workers_make_one_chain_and_fail_closed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    hub = Hub(tmp_path / "hub.sock", log, Lockout(LockoutSettings(), time.monotonic),
              AssociationSlots(4, 2, 2))  # fmt: skip
    clients = [HubClient(hub.path) for _ in range(3)]
    try:
        sinks = [HubAuditSink(c) for c in clients]

        def write(sink: HubAuditSink, first: int) -> None:
            for n in range(first, first + 50):
                sink.emit_deferred(_event(n))()  # written, then durable

        threads = [threading.Thread(target=write, args=(s, i * 100)) for i, s in enumerate(sinks)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.close()  # the log can take no more lines: the workers' operations fail
        with pytest.raises(AuditLogError):
            sinks[0].emit(_event(999))
    finally:
        for client in clients:
            client.close()
        hub.close()
    assert verify(tmp_path / "audit.jsonl").ok
    seen = {e.event.objects[0][1] for e in read_events(tmp_path / "audit.jsonl")}
    assert seen == {f"1.2.3.{n}" for i in range(3) for n in range(i * 100, i * 100 + 50)}
    assert not (tmp_path / "hub.sock").exists()


def test_lockout_and_slots_are_shared_and_a_dead_worker_gives_its_slots_back(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    slots = AssociationSlots(2, per_ae=2, per_user=2)
    hub = Hub(tmp_path / "hub.sock", log, Lockout(LockoutSettings(max_failures=3), time.monotonic),
              slots)  # fmt: skip
    lost = threading.Event()
    other_lost = threading.Event()
    one, other = HubClient(hub.path, on_lost=lost.set), HubClient(hub.path, on_lost=other_lost.set)
    try:
        a, b = HubLockout(one), HubLockout(other)
        assert not a.record_failure("198.51.100.7")
        assert not b.record_failure("198.51.100.7")
        assert b.record_failure("198.51.100.7")  # the third, counted over both
        assert a.locked("198.51.100.7")
        assert a.lift(None) == ["198.51.100.7"]
        assert not b.locked("198.51.100.7")

        async def take_all() -> tuple[bool, bool, bool]:
            return (
                await HubSlots(one).take(),
                await HubSlots(one).take(),
                await HubSlots(other).take(),
            )

        assert asyncio.run(take_all()) == (True, True, False)
        one.close()  # the worker holding both slots is gone
        deadline = time.monotonic() + 5
        while not slots.take_now() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.monotonic() < deadline  # given back
        assert not lost.is_set()  # closed on purpose: not "lost"
        hub.close()  # the supervisor is gone: the other worker hears it and stops
        assert other_lost.wait(5)
        with pytest.raises(AuditLogError):
            HubAuditSink(other).emit(_event(1))
    finally:
        other.close()
        log.close()
