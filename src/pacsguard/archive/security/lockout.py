"""Failed-attempt counting per source address, with a lockout window. Pure but for the clock."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import Final

from pacsguard.archive.config import LockoutSettings

#: Sources tracked at most; past this the least recently failing ones are forgotten, so a flood
#: of spoofed or rotating addresses cannot grow memory without bound.
MAX_TRACKED_SOURCES: Final = 100_000


class Lockout:
    """`max_failures` failures within `window_s` from one source lock it out for `lockout_s`."""

    def __init__(self, settings: LockoutSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked(self, source: str) -> bool:
        """True while `source` is locked out."""
        with self._lock:
            until = self._locked_until.get(source)
            if until is None:
                return False
            if self._clock() < until:
                return True
            del self._locked_until[source]
            return False

    def record_failure(self, source: str) -> bool:
        """Count one failure; True when this failure starts a lockout."""
        now = self._clock()
        with self._lock:
            times = self._failures.pop(source, None) or deque()
            self._failures[source] = times  # re-insert: dict order is recency order
            times.append(now)
            while times and times[0] <= now - self._settings.window_s:
                times.popleft()
            if len(times) >= self._settings.max_failures:
                if len(self._locked_until) >= MAX_TRACKED_SOURCES:
                    expired = [s for s, until in self._locked_until.items() if until <= now]
                    for old in expired:
                        del self._locked_until[old]
                self._locked_until[source] = now + self._settings.lockout_s
                del self._failures[source]
                return True
            while len(self._failures) > MAX_TRACKED_SOURCES:
                del self._failures[next(iter(self._failures))]
            return False

    def reset(self, source: str) -> None:
        """A successful authentication clears the source's failure count."""
        with self._lock:
            self._failures.pop(source, None)

    def locked_among(self, sources: Collection[str] | None = None) -> list[str]:
        """The sources among `sources` (all when None) locked out now, sorted; changes nothing."""
        now = self._clock()
        with self._lock:
            wanted = set(self._locked_until) if sources is None else set(sources)
            return sorted(
                s for s in wanted if s in self._locked_until and now < self._locked_until[s]
            )

    def lift(self, sources: Collection[str] | None = None) -> list[str]:
        """Lift the lockouts of `sources` (every lockout when None) and forget their failures;
        returns the sources that were locked out, sorted."""
        now = self._clock()
        with self._lock:
            wanted = set(self._locked_until) if sources is None else set(sources)
            lifted = sorted(
                s for s in wanted if s in self._locked_until and now < self._locked_until[s]
            )
            for source in wanted:
                self._locked_until.pop(source, None)
                self._failures.pop(source, None)
            return lifted
