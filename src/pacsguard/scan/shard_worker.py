"""The worker side of a sharded scan: each shard is a coroutine on the Dask worker's event loop,
and the shards a worker runs at once share one pool of probe slots.

A shard ends with its slowest target (a silent host holds its probe until the timeouts). Run
as one event loop per shard, each in a worker thread of its own, the shard's slots idled
through that tail while faster shards waited for a thread: on the internet lab (a /19 x 4
ports, mostly closed ports and a few tarpits) `--cluster local:2` took 81 s where one process
took 19 s. Here a shard is an `async` Dask task, run on the worker's own event loop (Dask runs
coroutine functions there), and every shard on that worker draws from one `SharedSlots`: the
worker's `--concurrency` and its share of `--rate`, held by the `ProbeSlots` worker plugin.
A shard in its tail then holds only its slow targets' slots, as in a one-process scan. Dask's
`nthreads` of a worker is the number of shards it runs at once (coroutines, not threads).

Dask is imported here; only a `--cluster` scan imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from distributed import Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from pacsguard.errors import ClusterError, UsageError
from pacsguard.report.jsonl import to_record
from pacsguard.report.table import ScanSummary
from pacsguard.scan.geo import GeoDatabases, GeoLookup
from pacsguard.scan.http_session import HttpOptions
from pacsguard.scan.model import HostReport, Observations, Target
from pacsguard.scan.probe import ProbeOptions
from pacsguard.scan.scheduler import Limits, SharedSlots, run_scan

#: The plugin's name on every worker; a coordinator registering it again replaces it.
PLUGIN_NAME: Final = "pacsguard-probe-slots"


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What a shard sends back: one object, pickled in one piece.

    Dask serializes a list element by element; as a list of (report, record) pairs, moving a
    shard's results cost the coordinator and the worker about a quarter of the CPU time of
    probing it (on the internet lab, mostly closed ports). The coordinator needs the records
    to write, the totals, and the reachable hosts' reports only for `--format table`."""

    #: The shard's JSON Lines records, UTF-8 (made on the worker, which scanned them, so
    #: `scanned_at` is the worker's clock).
    records: bytes
    count: int
    summary: ScanSummary
    #: Reports of the reachable targets, when the coordinator keeps them; else empty.
    reachable: tuple[HostReport, ...] = ()


class ProbeSlots(WorkerPlugin):
    """A worker's probe slots (`--concurrency`) and start rate, shared by its shards."""

    name = PLUGIN_NAME

    def __init__(self, concurrency: int, rate: float) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self.slots: SharedSlots | None = None
        self._geo: dict[GeoDatabases, GeoLookup] = {}

    def geo(self, databases: GeoDatabases) -> GeoLookup:
        """The worker's reader of `databases`, opened on first use (UsageError when a file
        cannot be read here: a remote worker needs the files at the same paths)."""
        lookup = self._geo.get(databases)
        if lookup is None:
            lookup = self._geo[databases] = databases.open()
        return lookup

    def teardown(self, worker: Worker) -> None:
        for lookup in self._geo.values():
            lookup.close()
        self._geo.clear()

    def setup(self, worker: Worker) -> None:
        # Load the DICOM stack now: left to the first port that answers, the import would
        # stall every probe on the loop (see `cli.scan.scan_scope`).
        import pacsguard.cli.scan
        import pacsguard.dicom.client  # noqa: F401

        self.slots = SharedSlots(self.concurrency, self.rate)


async def probe_shard(
    targets: Sequence[Target],
    options: ProbeOptions,
    http: HttpOptions,
    limits: Limits,
    keep_reachable: bool = False,
    geo: GeoDatabases | None = None,
) -> ShardResult:
    """The Dask task: probe one shard with the one-machine scheduler and prober
    (`pacsguard.cli.scan.probe_target`: DIMSE, or the web tier), in the worker's shared slots.
    `limits.concurrency` bounds this shard's targets in flight. With `geo`, each report gets
    its host's country and AS, as in a one-process scan."""
    from pacsguard.cli.scan import probe_target

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, ProbeSlots) or plugin.slots is None:
        raise ClusterError(
            f"worker {worker.address} has no {PLUGIN_NAME} plugin: it could not import "
            "pacsguard, or joined without it; check its environment"
        )

    try:
        locator = plugin.geo(geo) if geo is not None else None
    except UsageError as exc:
        raise ClusterError(f"worker {worker.address}: {exc}") from None

    async def prober(target: Target) -> Observations:
        return await probe_target(target, options, http)

    lines: list[str] = []
    summary = ScanSummary()
    reachable: list[HostReport] = []
    async for report in run_scan(targets, prober, limits, plugin.slots):
        if locator is not None:
            report = replace(report, location=locator.locate(report.observations.target.host))
        lines.append(json.dumps(to_record(report), separators=(",", ":"), sort_keys=True) + "\n")
        summary.add(report)
        if keep_reachable and report.observations.reachable:
            reachable.append(report)
    return ShardResult("".join(lines).encode("utf-8"), len(lines), summary, tuple(reachable))
