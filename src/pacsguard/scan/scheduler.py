"""The scheduler: concurrency, rate limit and streaming of results.

A fixed pool of workers pulls targets from one lazy iterator, so memory depends on the
concurrency, not on the number of targets: scanning a /16 holds no more state than a /24.
Reports stream out as each target finishes. Probers bound their own time (and report what they
saw when it runs out); `Limits.target_timeout` is the scheduler's backstop on top of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from pacsguard.scan.checks import assess
from pacsguard.scan.model import HostReport, Observations, Target

Prober = Callable[[Target], Awaitable[Observations]]


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 256
    #: New targets started per second across the whole scan; 0 means unlimited.
    rate: float = 0.0
    #: Seconds after which a prober that has not returned is cancelled and the target reported
    #: with only that fact; None leaves the bound to the prober.
    target_timeout: float | None = None


class RateLimiter:
    """Spaces starts evenly at `rate` per second (a leaky bucket with no burst)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


class SharedSlots:
    """Probe slots and a start rate shared by several scans on one event loop.

    The shards a Dask worker runs at once (`pacsguard.scan.shard_worker`) draw from one pool,
    as the targets of a one-process scan do: a shard waiting on its slowest target holds only
    that target's slot, and the other shards' targets take the rest."""

    def __init__(self, concurrency: int, rate: float = 0.0) -> None:
        self.concurrency = max(1, concurrency)
        self.semaphore = asyncio.Semaphore(self.concurrency)
        self.limiter = RateLimiter(rate)


async def probe_within(prober: Prober, target: Target, timeout: float | None) -> Observations:
    """`prober(target)`, cancelled after `timeout` seconds if it has not returned by then."""
    if timeout is None:
        return await prober(target)
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await prober(target)
    except TimeoutError:
        if not deadline.expired():
            raise  # the prober's own error, not our deadline
    return Observations(
        target=target,
        reachable=False,
        dicom=False,
        error=f"probe cancelled after {timeout:g}s: it overran its own time budget",
    )


async def run_scan(
    targets: Iterable[Target], prober: Prober, limits: Limits, slots: SharedSlots | None = None
) -> AsyncIterator[HostReport]:
    """Probe every target under the limits; yield a HostReport as each one finishes.

    With `slots`, at most `limits.concurrency` of these targets are in flight and, together
    with the other scans sharing `slots`, no more than its concurrency and rate allow."""
    iterator = iter(targets)
    results: asyncio.Queue[HostReport | None] = asyncio.Queue(maxsize=limits.concurrency * 2)
    limiter = slots.limiter if slots is not None else RateLimiter(limits.rate)
    gate: contextlib.AbstractAsyncContextManager[object] = (
        slots.semaphore if slots is not None else contextlib.nullcontext()
    )

    errors: list[Exception] = []

    async def worker() -> None:
        try:
            for target in iterator:
                # The slot is taken before the deadline starts: waiting for one is no probe time.
                async with gate:
                    await limiter.wait()
                    observations = await probe_within(prober, target, limits.target_timeout)
                await results.put(assess(observations))
        except Exception as exc:  # a bug, not a remote's behaviour: surface it after draining
            errors.append(exc)
        await results.put(None)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, limits.concurrency))]
    remaining = len(workers)
    try:
        while remaining:
            report = await results.get()
            if report is None:
                remaining -= 1
                continue
            yield report
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    if errors:
        raise errors[0]
