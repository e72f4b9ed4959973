"""Association slots: the global cap, and the caps per calling AE and per user.

One `AssociationSlots` counts for one archive. With ``[server] workers = 1`` the DIMSE front end
holds it; with several worker processes the supervisor holds the one instance and the workers
ask it over the hub (`archive.hub.HubSlots`), so that the caps hold across all of them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Protocol


class SlotCounter(Protocol):
    """What the DIMSE front end asks before and after the gate (async: it may be remote)."""

    async def take(self) -> bool:
        """Take one of the global slots; False when all are taken."""
        ...

    async def give(self) -> None: ...

    async def take_peer(self, ae_title: str, username: str | None) -> str | None:
        """Count one association of `ae_title` (and `username`); why not, or None when taken."""
        ...

    async def give_peer(self, ae_title: str, username: str | None) -> None: ...


class AssociationSlots:
    """Thread-safe counts of associations: in all, per calling AE, per user."""

    def __init__(self, max_associations: int, per_ae: int, per_user: int) -> None:
        self._max, self._per_ae, self._per_user = max_associations, per_ae, per_user
        self._lock = threading.Lock()
        self._taken = 0
        self._by_ae: Counter[str] = Counter()
        self._by_user: Counter[str] = Counter()

    def take_now(self) -> bool:
        with self._lock:
            if self._taken >= self._max:
                return False
            self._taken += 1
            return True

    def give_now(self) -> None:
        with self._lock:
            self._taken = max(0, self._taken - 1)

    def take_peer_now(self, ae_title: str, username: str | None) -> str | None:
        with self._lock:
            if self._by_ae[ae_title] >= self._per_ae:
                return f"per-AE association limit ({self._per_ae}) reached"
            if username is not None and self._by_user[username] >= self._per_user:
                return f"per-user association limit ({self._per_user}) reached"
            self._by_ae[ae_title] += 1
            if username is not None:
                self._by_user[username] += 1
            return None

    def give_peer_now(self, ae_title: str, username: str | None) -> None:
        with self._lock:
            _decrement(self._by_ae, ae_title)
            if username is not None:
                _decrement(self._by_user, username)

    # The async face the front end uses (`SlotCounter`): nothing here waits.
    async def take(self) -> bool:
        return self.take_now()

    async def give(self) -> None:
        self.give_now()

    async def take_peer(self, ae_title: str, username: str | None) -> str | None:
        return self.take_peer_now(ae_title, username)

    async def give_peer(self, ae_title: str, username: str | None) -> None:
        self.give_peer_now(ae_title, username)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
