"""Repeated refusals audited as counts: one line when a kind of refusal starts, one per window.

Every audit line is fsync'd and hash-chained. A host that reconnects in a loop (a scanner, a
misconfigured modality, an attacker filling the disk) would otherwise add one durable line per
attempt. Here the first refusal of a kind (source address, event, reason) in a window is audited
at once; the ones that follow are counted, and one line with ``"repeated": N`` closes the window.
Nothing is lost: the lines' counts add up to the attempts. Memory is bounded: past
`MAX_KINDS` kinds, further sources share one kind per reason with address ``*``. Pure but for
the clock; used from the front end's event loop only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

from pacsguard.archive.audit.events import AuditEvent, Participant

#: Seconds over which repeated refusals of one kind are summed into one line.
WINDOW_S: Final = 30.0
#: Kinds tracked at once.
MAX_KINDS: Final = 4096

_Kind = tuple[str, str, str]


@dataclasses.dataclass(slots=True)
class _Window:
    event: AuditEvent
    opened: float
    repeated: int = 0


class RefusalTally:
    """Decides which refusals get an audit line now, and sums up the rest per window."""

    def __init__(self, clock: Callable[[], float], window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self._window = window_s
        self._open: dict[_Kind, _Window] = {}

    def note(self, event: AuditEvent) -> AuditEvent | None:
        """The event to audit now (the first of its kind in a window), or None (counted)."""
        kind = _kind_of(event)
        if kind not in self._open and len(self._open) >= MAX_KINDS:
            event = _anonymous(event)
            kind = _kind_of(event)
        window = self._open.get(kind)
        if window is None:
            self._open[kind] = _Window(event, self._clock())
            return event
        window.repeated += 1
        return None

    def due(self, *, everything: bool = False) -> list[AuditEvent]:
        """Close the windows that are over (all of them when `everything`): one line each
        for those that counted repeats."""
        now = self._clock()
        lines: list[AuditEvent] = []
        for kind, window in list(self._open.items()):
            if not everything and now - window.opened < self._window:
                continue
            del self._open[kind]
            if window.repeated:
                detail = {
                    **window.event.detail,
                    "repeated": window.repeated,
                    "over_s": max(1, round(now - window.opened)),
                }
                lines.append(dataclasses.replace(window.event, detail=detail))
        return lines


def _kind_of(event: AuditEvent) -> _Kind:
    address = event.participants[0].address if event.participants else None
    return (address or "", event.event.value, str(event.detail.get("reason", "")))


def _anonymous(event: AuditEvent) -> AuditEvent:
    return dataclasses.replace(event, participants=(Participant(address="*"),))
