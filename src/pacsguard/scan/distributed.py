"""Scale-out: a scan split into shards that run on Dask distributed workers, resumable.

The targets, in their deterministic order, are cut into contiguous shards of `shard_size`.
Each shard is one Dask task (`pacsguard.scan.shard_worker.probe_shard`): a coroutine on the
worker's event loop running the same asyncio scheduler and probe as a one-machine scan, in
probe slots shared by all the shards on that worker, returning its JSON Lines records and
totals in one piece (`ShardResult`). The coordinator (the `pacsguard scan --cluster ...`
process) keeps a bounded window of shards in flight, and writes finished shards once: records
appended and fsync'd, then the shards journaled as done (`pacsguard.scan.journal`), several
at a time when several have finished.

- A worker that dies mid-shard: the Dask scheduler runs the shard again on another worker; a
  shard that raises is retried (`retries`). Only a finished shard is written, so nothing is
  written twice.
- A coordinator that dies: `--resume RUN_ID` cuts the output back to the last journaled shard
  and submits only the shards not journaled; finished shards are never probed again. Targets of
  shards in flight at the time of death are probed again (their results were never written).

`--cluster local:N` starts a `distributed.LocalCluster` of N worker processes on loopback;
`--cluster tcp://HOST:PORT` uses a running scheduler (`dask scheduler`, `dask worker`), whose
workers must be able to import pacsguard. A worker runs as many shards at once as it has
Dask threads (`dask worker --nthreads`; they are coroutines on its event loop, so give it
several), all in one pool of `--concurrency` probe slots; `--rate` is shared out evenly
between the workers. Dask is imported only here and in `shard_worker`, and only when a cluster
is used, so the rest of the command line starts without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pacsguard.errors import ClusterError, UsageError
from pacsguard.report.jsonl import TextSink
from pacsguard.report.table import ScanSummary
from pacsguard.scan.geo import GeoDatabases
from pacsguard.scan.http_session import HttpOptions
from pacsguard.scan.journal import RunJournal, new_run_id, scan_fingerprint
from pacsguard.scan.model import HostReport, Severity, Target
from pacsguard.scan.probe import ProbeOptions
from pacsguard.scan.scheduler import Limits
from pacsguard.scan.targets import Scope

if TYPE_CHECKING:
    from distributed import Client

    from pacsguard.scan.shard_worker import ShardResult

_LOCAL: Final = re.compile(r"^local:(\d{1,3})$")
_REMOTE: Final = re.compile(r"^(tcp|tls)://\S+$")
#: Most worker processes `local:N` starts on one machine.
MAX_LOCAL_WORKERS: Final = 256
DEFAULT_SHARD_SIZE: Final = 256
#: Shards a `local:N` worker process runs at once (its Dask `nthreads`; coroutines on its event
#: loop, not threads). A shard lasts as long as its slowest target: one silent host among 255
#: closed ports holds its shard for the read timeouts (twice: plain, then TLS), so the shards
#: in flight, not the probe slots, bounded a sparse scan. On the internet lab (a /19 x 4
#: ports) `local:2` took 52 s with 8 shards per worker, 24 s with 64 (one process: 19 s).
LOCAL_SHARDS_PER_WORKER: Final = 64
#: Fewer shards at once per worker than this, and a sparse scan waits on shard tails.
FEW_SHARDS_PER_WORKER: Final = 16


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """`local:N` (workers started here) or a scheduler address."""

    local_workers: int | None = None
    scheduler: str | None = None


def parse_cluster(text: str) -> ClusterAddress:
    """`local:4` or `tcp://10.0.0.5:8786`; UsageError says what to write instead."""
    text = text.strip()
    local = _LOCAL.match(text)
    if local:
        workers = int(local.group(1))
        if not 0 < workers <= MAX_LOCAL_WORKERS:
            raise UsageError(f"--cluster {text}: use local:1 to local:{MAX_LOCAL_WORKERS}")
        return ClusterAddress(local_workers=workers)
    if _REMOTE.match(text):
        return ClusterAddress(scheduler=text)
    raise UsageError(
        f"--cluster {text!r}: use local:N (N worker processes here) or a Dask scheduler "
        "address such as tcp://127.0.0.1:8786"
    )


@dataclass(frozen=True, slots=True)
class ShardedRun:
    """How a sharded scan runs and where it writes."""

    cluster: ClusterAddress
    #: The JSON Lines file; on resume None means the one the run was started with.
    output: Path | None
    state_dir: Path
    shard_size: int = DEFAULT_SHARD_SIZE
    #: A run to continue; None starts a new one.
    resume: str | None = None
    #: Times Dask re-runs a shard that raised; a shard whose worker died is re-run by the
    #: scheduler (up to its `allowed-failures`).
    retries: int = 3
    #: Seconds to wait for a scheduler and its first worker.
    connect_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    summary: ScanSummary
    shards_run: int
    earlier_records: int
    #: The complete JSON Lines output of the run.
    output: Path


def shards(targets: Iterable[Target], size: int) -> Iterator[tuple[int, list[Target]]]:
    """Contiguous slices of the target stream, numbered from 0; the last may be short."""
    batch: list[Target] = []
    index = 0
    for target in targets:
        batch.append(target)
        if len(batch) == size:
            yield index, batch
            index, batch = index + 1, []
    if batch:
        yield index, batch


def scan_on_cluster(
    run: ShardedRun,
    scope: Scope | Sequence[Target],
    options: ProbeOptions,
    limits: Limits,
    *,
    stdout: TextSink | None = None,
    keep: list[HostReport] | None = None,
    http: HttpOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
    announce: Callable[[str], None] | None = None,
    client: Client | None = None,
    geo: GeoDatabases | None = None,
) -> RunOutcome:
    """Run (or resume) a sharded scan; every target's record is written exactly once.

    `client`: an already connected Dask client (tests, embedding); otherwise one is made from
    `run.cluster` and closed at the end. `geo`: the GeoIP files each worker reads to locate
    its hosts (the same paths on every worker); a resume must name the same ones.
    """
    http = http or HttpOptions()
    decisive: tuple[object, ...] = (options, _http_settings(http))
    if geo is not None:
        decisive += (geo,)
    fingerprint = scan_fingerprint(scope, decisive, run.shard_size)
    summary = ScanSummary()
    earlier = 0
    if run.resume is None:
        if run.output is None:
            raise UsageError(
                "a --cluster scan needs -o FILE: records are written there once, and --resume "
                "continues that file"
            )
        run_id = new_run_id()
        journal = RunJournal.start(
            run.state_dir,
            run_id,
            fingerprint=fingerprint,
            output=run.output,
            shard_size=run.shard_size,
        )
        done: frozenset[int] = frozenset()
    else:
        run_id = run.resume
        journal, before = RunJournal.resume(
            run.state_dir, run_id, fingerprint=fingerprint, output=run.output
        )
        done = before.done
        for record in journal.earlier_records(before.end_offset):
            summarise_record(summary, record)
            earlier += 1
    with journal, contextlib.ExitStack() as stack:
        if announce is not None:
            verb = "resuming" if run.resume else "started"
            announce(
                f"run {run_id} {verb}: journal {journal.path}; after an interruption, repeat "
                f"this command with --resume {run_id}"
            )
        if client is None:
            client = stack.enter_context(_connect(run.cluster, run.connect_timeout))
        fewest = min(client.nthreads().values(), default=FEW_SHARDS_PER_WORKER)
        if announce is not None and fewest < FEW_SHARDS_PER_WORKER:
            announce(
                f"a worker runs only {fewest} shard(s) at once: each waits on its slowest "
                f"target; start workers with `dask worker --nthreads {LOCAL_SHARDS_PER_WORKER}` "
                "(shards are coroutines, not threads)"
            )
        written = _run_shards(
            client,
            run,
            run_id,
            journal,
            shards(scope, run.shard_size),
            done,
            (options, http),
            limits,
            sinks=_Sinks(summary, stdout, keep, on_progress),
            geo=geo,
        )
        journal.finish(len(done) + written)
    return RunOutcome(run_id, summary, written, earlier, journal.output)


@dataclass
class _Sinks:
    """Where a durably written shard's reports go next."""

    summary: ScanSummary
    stdout: TextSink | None
    keep: list[HostReport] | None
    on_progress: Callable[[int], None] | None

    def take(self, result: ShardResult) -> None:
        self.summary.merge(result.summary)
        if self.keep is not None:
            self.keep.extend(result.reachable)
        if self.stdout is not None:
            self.stdout.write(result.records.decode("utf-8"))
            self.stdout.flush()
        if self.on_progress is not None:
            self.on_progress(result.count)


def _run_shards(
    client: Client,
    run: ShardedRun,
    run_id: str,
    journal: RunJournal,
    pending: Iterator[tuple[int, list[Target]]],
    done: frozenset[int],
    options: tuple[ProbeOptions, HttpOptions],
    limits: Limits,
    *,
    sinks: _Sinks,
    geo: GeoDatabases | None = None,
) -> int:
    """Keep a window of shards in flight; write them as they finish. Returns shards written."""
    from distributed import as_completed

    from pacsguard.scan.shard_worker import ProbeSlots, probe_shard

    nthreads: dict[str, int] = client.nthreads()
    workers = max(1, len(nthreads))
    threads = max(1, sum(nthreads.values()))
    # Each worker: --concurrency slots and its share of --rate, shared by its shards (also by
    # workers that join later, and by one restarted after a crash).
    client.register_plugin(
        ProbeSlots(limits.concurrency, limits.rate / workers if limits.rate > 0 else 0.0)
    )
    shard_limits = dataclasses.replace(
        limits, concurrency=max(1, min(limits.concurrency, run.shard_size))
    )
    # Unique per coordinator: a scheduler may still hold a dead coordinator's keys.
    attempt = secrets.token_hex(4)
    window = max(2, 2 * threads)
    in_flight: dict[Any, int] = {}
    finished = as_completed()
    written = 0

    def submit_next() -> None:
        for index, targets in pending:
            if index in done:
                if sinks.on_progress is not None:
                    sinks.on_progress(len(targets))
                continue
            future = client.submit(
                probe_shard,
                targets,
                *options,
                shard_limits,
                sinks.keep is not None,
                geo,
                key=f"pacsguard-shard-{run_id}-{attempt}-{index}",
                retries=run.retries,
                pure=False,
            )
            in_flight[future] = index
            finished.add(future)
            return

    def write(batch: list[tuple[int, ShardResult]]) -> None:
        nonlocal written
        journal.append_shards([(index, result.records, result.count) for index, result in batch])
        written += len(batch)
        for _, result in batch:
            sinks.take(result)

    for _ in range(window):
        submit_next()
    try:
        # Shards that finished together are written with one fsync and one journal commit.
        for futures in finished.batches():
            batch: list[tuple[int, ShardResult]] = []
            for future in futures:
                index = in_flight.pop(future)
                try:
                    batch.append((index, future.result()))
                except Exception as exc:
                    write(batch)  # the batch's finished shards are kept
                    raise ClusterError(
                        f"shard {index} of run {run_id} failed on the cluster "
                        f"({type(exc).__name__}: {exc}); {len(done) + written} shards are "
                        f"written; continue with --resume {run_id}"
                    ) from exc
            write(batch)
            for _ in batch:
                submit_next()
    finally:
        for future in in_flight:
            future.cancel()
    return written


@contextlib.contextmanager
def _connect(address: ClusterAddress, timeout: float) -> Iterator[Client]:
    """A Dask client on a LocalCluster of worker processes (loopback) or on a scheduler."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if address.local_workers is not None:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=address.local_workers,
                    threads_per_worker=LOCAL_SHARDS_PER_WORKER,
                    processes=True,
                    host="127.0.0.1",
                    # No dashboard (bokeh is not installed); its HTTP server on loopback,
                    # on a free port: 8787 may be another cluster's.
                    dashboard_address="127.0.0.1:0",
                    silence_logs=logging.WARNING,
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address.scheduler, timeout=timeout))
            except (OSError, TimeoutError) as exc:
                raise ClusterError(
                    f"cannot reach the Dask scheduler at {address.scheduler} ({exc}); "
                    "check the address and that `dask scheduler` runs"
                ) from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise ClusterError(
                f"no Dask worker joined {address.scheduler or 'the local cluster'} within "
                f"{timeout:g} s; start workers with `dask worker SCHEDULER_ADDRESS`"
            ) from None
        yield client


def _http_settings(http: HttpOptions) -> dict[str, object]:
    """HttpOptions for the fingerprint: its settings, not the catalog loaded from the package."""
    return {f.name: getattr(http, f.name) for f in dataclasses.fields(http) if f.name != "catalog"}


def summarise_record(summary: ScanSummary, record: dict[str, Any]) -> None:
    """Add a record written before a resume to the totals, as `ScanSummary.add` would."""
    summary.targets += 1
    summary.reachable += bool(record["reachable"])
    summary.dicom += bool(record["dicom"])
    if record["honeypot"]["flagged"]:
        summary.honeypots += 1
        return
    summary.accepted += bool(record["accepted_called_aets"])
    exposure = record["exposure"]
    if exposure is not None and exposure["studies"]:
        summary.exposing += 1
        summary.studies += exposure["studies"]
        summary.instances += exposure["instances"]
        summary.patients += exposure["patients"]
        summary.tally.add(
            record["config_signature"],
            exposure["patients"],
            exposure["studies"],
            exposure["instances"],
        )
    if record["worst_severity"] is not None:
        summary.severities[Severity(record["worst_severity"])] += 1
