"""Failed-attempt counting per key, with a lockout window. Pure but for the clock.

The gate counts under two kinds of key: a source address (``198.51.100.7``) and an account
(``account:alice``), so that guessing from many addresses locks the account and guessing many
accounts from one address locks the address. A failure may carry a tag (the account it was
against), so that a success clears exactly the failures it makes moot.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import Final, Protocol

from pacsguard.archive.config import LockoutSettings

#: Sources tracked at most; past this the least recently failing ones are forgotten, so a flood
#: of spoofed or rotating addresses cannot grow memory without bound.
MAX_TRACKED_SOURCES: Final = 100_000


class LockoutCounter(Protocol):
    """What the gate asks of its counter: a `Lockout`, or with several worker processes the
    supervisor's one `Lockout`, asked over the hub (`archive.hub.HubLockout`)."""

    def locked(self, key: str) -> bool: ...

    def record_failure(self, key: str, tag: str | None = None) -> bool: ...

    def reset(self, key: str, tag: str | None = None) -> None: ...

    def locked_among(self, keys: Collection[str] | None = None) -> list[str]: ...

    def lift(self, keys: Collection[str] | None = None) -> list[str]: ...


class Lockout:
    """`max_failures` failures within `window_s` against one key lock it out for `lockout_s`."""

    def __init__(self, settings: LockoutSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        #: Per key: (time, tag) of each failure in the window, oldest first.
        self._failures: dict[str, deque[tuple[float, str | None]]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked(self, key: str) -> bool:
        """True while `key` is locked out."""
        with self._lock:
            until = self._locked_until.get(key)
            if until is None:
                return False
            if self._clock() < until:
                return True
            del self._locked_until[key]
            return False

    def record_failure(self, key: str, tag: str | None = None) -> bool:
        """Count one failure (against `tag`, if given); True when it starts a lockout."""
        now = self._clock()
        with self._lock:
            times = self._failures.pop(key, None) or deque()
            self._failures[key] = times  # re-insert: dict order is recency order
            times.append((now, tag))
            while times and times[0][0] <= now - self._settings.window_s:
                times.popleft()
            if len(times) >= self._settings.max_failures:
                if len(self._locked_until) >= MAX_TRACKED_SOURCES:
                    expired = [s for s, until in self._locked_until.items() if until <= now]
                    for old in expired:
                        del self._locked_until[old]
                self._locked_until[key] = now + self._settings.lockout_s
                del self._failures[key]
                return True
            while len(self._failures) > MAX_TRACKED_SOURCES:
                del self._failures[next(iter(self._failures))]
            return False

    def reset(self, key: str, tag: str | None = None) -> None:
        """Forget the failures counted against `key` (those tagged `tag` only, if given);
        a lockout already running stays."""
        with self._lock:
            if tag is None:
                self._failures.pop(key, None)
                return
            times = self._failures.get(key)
            if times is not None:
                kept = deque(entry for entry in times if entry[1] != tag)
                if kept:
                    self._failures[key] = kept
                else:
                    del self._failures[key]

    def locked_among(self, keys: Collection[str] | None = None) -> list[str]:
        """The keys among `keys` (all when None) locked out now, sorted; changes nothing."""
        now = self._clock()
        with self._lock:
            wanted = set(self._locked_until) if keys is None else set(keys)
            return sorted(
                s for s in wanted if s in self._locked_until and now < self._locked_until[s]
            )

    def lift(self, keys: Collection[str] | None = None) -> list[str]:
        """Lift the lockouts of `keys` (every lockout when None) and forget their failures;
        returns the keys that were locked out, sorted."""
        now = self._clock()
        with self._lock:
            wanted = set(self._locked_until) if keys is None else set(keys)
            lifted = sorted(
                s for s in wanted if s in self._locked_until and now < self._locked_until[s]
            )
            for key in wanted:
                self._locked_until.pop(key, None)
                self._failures.pop(key, None)
            return lifted
