"""A short-lived memory of passcodes that verified, so a busy peer pays Argon2id once.

Argon2id stays the storage format: one verification costs 64 MiB and tens of milliseconds of CPU
by design. A modality that opens an association per study would pay that each time, and a burst
of them would take seconds and hundreds of MiB. Here a passcode that verified is remembered for
`ttl_s` after its last use (a fixed lifetime made a busy peer pay again every `ttl_s`, and all
its concurrent logins waited for that one verification: measured 0.3-0.5 s stalls under load)
as HMAC-SHA256(process key, username, stored hash, passcode): the key is random per
process and never leaves memory, so the table is useless outside it; the stored hash is part of
the input, so a changed password never matches an old entry. The gate forgets a user's entries
when the account is locked out. Only successes are remembered: every wrong guess still costs
a full verification. Concurrent checks of the same credentials wait for the first one rather
than hashing side by side. Thread-safe; pure but for the clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

#: Entries kept at most; the oldest go first.
MAX_ENTRIES: Final = 4096
#: How long a follower waits for the first verification of the same credentials.
_FOLLOW_TIMEOUT_S: Final = 30.0


class VerifiedCredentials:
    """Remembers (username, stored hash, passcode) triples that verified, for `ttl_s` after
    their last use."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[str, float]] = {}
        self._in_flight: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()

    def digest(self, username: str, stored_hash: str, passcode: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (username.encode("utf-8"), stored_hash.encode("ascii"), passcode):
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        return mac.digest()

    def known(self, digest: bytes) -> bool:
        """Whether these credentials verified, and were last used less than `ttl_s` ago; a
        use remembers them for another `ttl_s` (and makes them the newest entry)."""
        with self._lock:
            entry = self._entries.pop(digest, None)
            if entry is None:
                return False
            now = self._clock()
            if now >= entry[1]:
                return False
            self._entries[digest] = (entry[0], now + self._ttl)
            return True

    def remember(self, digest: bytes, username: str) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries.pop(digest, None)
            self._entries[digest] = (username, self._clock() + self._ttl)
            while len(self._entries) > MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]

    def forget_user(self, username: str) -> None:
        """Drop every entry of `username` (its account was locked out)."""
        with self._lock:
            for digest in [d for d, (user, _) in self._entries.items() if user == username]:
                del self._entries[digest]

    @contextmanager
    def first_check(self, digest: bytes) -> Iterator[bool]:
        """Yields True to the first of concurrent checks of `digest`; the others wait until it
        is done and get False (then `known` tells whether it verified)."""
        with self._lock:
            running = self._in_flight.get(digest)
            if running is None:
                done = self._in_flight[digest] = threading.Event()
        if running is not None:
            running.wait(_FOLLOW_TIMEOUT_S)
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                del self._in_flight[digest]
            done.set()
