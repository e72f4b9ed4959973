"""The scan scheduler's limits when several scans share one pool of probe slots (the shards a
Dask worker runs at once, `pacsguard.scan.shard_worker`)."""

from __future__ import annotations

import asyncio

from pacsguard.scan.model import HostReport, Observations, Target
from pacsguard.scan.scheduler import Limits, SharedSlots, run_scan


class _Counting:
    """A prober that answers after `delay` seconds and counts probes in flight."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_flight = 0
        self.most = 0

    async def __call__(self, target: Target) -> Observations:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return Observations(target=target, reachable=True, dicom=False)


async def _collect(scan: object) -> list[HostReport]:
    return [report async for report in scan]  # type: ignore[attr-defined]


def _targets(first: int, count: int) -> list[Target]:
    return [Target(f"127.0.0.{i}", 104) for i in range(first, first + count)]


def test_scans_sharing_slots_stay_within_them_together() -> None:
    prober = _Counting(0.02)

    async def go() -> list[list[HostReport]]:
        slots = SharedSlots(5)
        scans = [
            run_scan(_targets(1 + 20 * i, 20), prober, Limits(concurrency=8), slots)
            for i in range(3)
        ]
        return await asyncio.gather(*(_collect(s) for s in scans))

    results = asyncio.run(go())
    assert prober.most == 5  # not 3 x 8
    reported = [r.observations.target for reports in results for r in reports]
    assert sorted(t.host for t in reported) == sorted(t.host for t in _targets(1, 60))


def test_each_scan_stays_within_its_own_concurrency_inside_shared_slots() -> None:
    prober = _Counting(0.02)
    asyncio.run(_collect(run_scan(_targets(1, 30), prober, Limits(concurrency=3), SharedSlots(50))))
    assert prober.most == 3


def test_waiting_for_a_shared_slot_is_not_probe_time() -> None:
    """One slot, two scans of one target each: the second waits a whole probe for the slot,
    which its target timeout (shorter than both probes) does not count."""
    prober = _Counting(1.0)

    async def go() -> list[list[HostReport]]:
        slots = SharedSlots(1)
        limits = Limits(concurrency=1, target_timeout=1.6)
        scans = [run_scan(_targets(i, 1), prober, limits, slots) for i in (1, 2)]
        return await asyncio.gather(*(_collect(s) for s in scans))

    for [report] in asyncio.run(go()):
        assert report.observations.error is None
        assert report.observations.reachable
