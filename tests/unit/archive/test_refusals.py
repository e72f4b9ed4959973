from __future__ import annotations

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.dimse import aio_refusals
from pacsguard.archive.dimse.aio_refusals import RefusalTally
from pacsguard.archive.security.peer_text import shown


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused(address: str, reason: str = "too many pending connections") -> AuditEvent:
    return AuditEvent(
        EventType.ASSOCIATION,
        EventAction.EXECUTE,
        EventOutcome.MINOR_FAILURE,
        (Participant(address=address),),
        detail={"result": "refused", "reason": reason},
    )


def test_the_first_refusal_is_audited_then_the_rest_are_counted_per_window() -> None:
    clock = Clock()
    tally = RefusalTally(clock, window_s=30)
    assert tally.note(refused("198.51.100.1")) == refused("198.51.100.1")
    assert all(tally.note(refused("198.51.100.1")) is None for _ in range(499))
    # another source, or another reason, is its own kind
    assert tally.note(refused("198.51.100.2")) is not None
    assert tally.note(refused("198.51.100.1", "no association request in time")) is not None
    clock.now += 29
    assert tally.due() == []
    clock.now += 2
    (line,) = tally.due()  # kinds without repeats close silently
    assert line.participants[0].address == "198.51.100.1"
    assert line.detail == {
        "result": "refused",
        "reason": "too many pending connections",
        "repeated": 499,
        "over_s": 31,
    }
    assert tally.note(refused("198.51.100.1")) is not None  # a new window


def test_stop_closes_every_window_and_memory_is_bounded() -> None:
    clock = Clock()
    tally = RefusalTally(clock)
    limit = aio_refusals.MAX_KINDS
    for i in range(limit + 50):
        tally.note(refused(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"))
        tally.note(refused(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"))
    lines = tally.due(everything=True)
    assert len(lines) == limit + 1  # past MAX_KINDS, new sources share one kind
    shared = [e for e in lines if e.participants[0].address == "*"]
    assert len(shared) == 1 and shared[0].detail["repeated"] == 2 * 50 - 1
    assert tally.due(everything=True) == []


def test_peer_text_is_escaped_and_clipped() -> None:
    assert shown("ADMIN") == "'ADMIN'"
    assert shown(b"caf\xc3\xa9") == "'café'"
    clipped = shown("A" * 1000 + "\n")
    assert clipped.startswith("'" + "A" * 64 + "'") and clipped.endswith("(+937 chars)")
    assert "\n" not in shown("line\nbreak") and "\\n" in shown("line\nbreak")
