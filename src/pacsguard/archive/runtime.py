"""Where the archive's front ends run: one event loop in one thread, and the thread pools.

Every front end (DIMSE, DICOMweb) runs on the same event loop, in one background thread the
`Runtime` owns: uvloop's (libuv under the asyncio API; its TLS and socket transports are
compiled, where asyncio's `sslproto` handles every TLS record in Python). Each front end hands
its blocking archive calls (the service, the audit log) to the same bounded pool,
`Runtime.executor`: one budget of threads for the index, blob and audit work whichever
transport it came in by. Authentication has a pool of its own, `Runtime.gate_executor`, also
shared: a burst of logins (Argon2id, bounded inside the gate) waits there and cannot take the
threads that stores and audit lines need.

A front end is anything with `start` and `stop` coroutines (`FrontEnd`): the composition root
(`app.start_archive`) builds each one with the runtime, starts them in order on the loop and
stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import uvloop

#: Seconds to wait for a front end to start or stop, and for the loop thread to end.
STOP_TIMEOUT: Final = 15.0
#: Threads that run gate decisions. Argon2id verifications are bounded inside the gate (a
#: semaphore), so most of these threads wait there cheaply during a burst of logins, and a
#: peer with a remembered passcode, a certificate or a token still gets a thread at once.
GATE_THREADS: Final = 32

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listener: where it is, what it speaks (`protocol`: dicom, https...) and whether it
    speaks TLS."""

    host: str
    port: int
    tls: bool
    protocol: str = "dicom"

    def __str__(self) -> str:
        scheme = f"{self.protocol}-tls" if self.tls and self.protocol == "dicom" else self.protocol
        return f"{scheme}://{self.host}:{self.port}"


class FrontEnd(Protocol):
    """A transport serving the archive on the runtime's loop."""

    async def start(self) -> Sequence[Endpoint]:
        """Bind every listener (on the loop); where they listen. Raises when one cannot."""
        ...

    async def stop(self) -> None:
        """Close the listeners and end every connection (on the loop)."""
        ...


class Runtime:
    """One event loop (in a background thread, started on first use) and the shared pools."""

    def __init__(self, *, workers: int, gate_workers: int = GATE_THREADS) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archive")
        self.gate_executor = ThreadPoolExecutor(
            max_workers=gate_workers, thread_name_prefix="archive-gate"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop every front end runs on (started now if it is not running yet)."""
        with self._lock:
            if self._loop is None:
                loop = uvloop.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="archive-loop", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = STOP_TIMEOUT) -> _T:
        """Run `coroutine` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def close(self) -> None:
        """Stop the loop and its thread, then the pools (pending work is cancelled)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=STOP_TIMEOUT)
            if not thread.is_alive():
                with contextlib.suppress(Exception):
                    loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.gate_executor.shutdown(wait=False, cancel_futures=True)
