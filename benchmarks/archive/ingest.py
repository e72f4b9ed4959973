"""1. Ingest: storescu into each target, and the fsync-family calls each server makes."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._syncs import count_syncs
from benchmarks.archive.data import write_ingest_set
from benchmarks.archive.peers import (
    PLAIN_AET,
    Orthanc,
    Pacsguard,
    Storescp,
    run_timed,
    storescu,
    warm_page_cache,
)
from benchmarks.archive.senders import (
    Sender,
    log_config,
    percentile,
    pynetdicom_argv,
    send,
    storescu_argv,
)

# --- 1. ingest ----------------------------------------------------------------------------------

#: The row every other row is compared with, and the one the pynetdicom rows are compared with.
ORTHANC = "Orthanc 1.10 (SyncStorageArea)"
ORTHANC_PYNETDICOM = "Orthanc 1.10, pynetdicom client (Nagle on)"
#: The row the targets are judged on: storescu as a new user runs it, with PS3.7 user identity.
PACSGUARD_USER = "pacsguard (plaintext, user identity)"
#: The same with `[server] workers = 2` (a supervisor and two worker processes).
PACSGUARD_WORKERS = "pacsguard, 2 workers (plaintext, user identity)"
PACSGUARD_ADDRESS = "pacsguard (plaintext, address AE)"
PACSGUARD_TLS = "pacsguard (TLS, user identity)"
PACSGUARD_PYNETDICOM = "pacsguard, pynetdicom client (Nagle on, user identity)"
#: Diagnostic rows: the same servers with their data on tmpfs, where a sync costs nothing and
#: no storage device is involved, so that a gap on disk splits into processing and storage.
PACSGUARD_TMPFS = "pacsguard (plaintext, data on tmpfs)"
ORTHANC_TMPFS = "Orthanc 1.10 (storage on tmpfs)"
STORESCP = "storescp (no fsync)"
STORESCP_FSYNC = "storescp + fsync per file"
#: Instances the pynetdicom rows send (the first of the set).
PYNETDICOM_LIMIT = 200


@dataclass(frozen=True)
class Run:
    seconds: float
    held: int
    latencies_ms: list[float]


@dataclass(frozen=True)
class IngestTarget:
    name: str
    run: Callable[[list[Path], Path], Run]  # (one folder per sender, scratch dir) -> Run
    baseline: str = ORTHANC  # the row this one's ratio is taken against
    single_sender_only: bool = False  # the pynetdicom and storescp rows
    #: Send only the first this many instances of the set (the pynetdicom rows: ~40 ms per
    #: store with Nagle on against Orthanc would make the whole set take a minute per run).
    limit: int | None = None


def ingest_targets(
    work: Path,
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    plain: Storescp,
    synced: Storescp | None,
    tmpfs: Path | None = None,
    earlier: tuple[str, Pacsguard] | None = None,
) -> list[IngestTarget]:
    """Every ingest row; `earlier` (a label such as a commit, and pacsguard served from that
    commit's code) adds that version's judged row and tmpfs row, for before/after ratios."""
    config = log_config(work)

    def placed(scratch: Path, in_memory: bool) -> Path:
        if not in_memory or tmpfs is None:
            return scratch
        return Path(tempfile.mkdtemp(prefix="pacsguard-bench-", dir=tmpfs))

    def clients(sender: Sender, folders: list[Path], dcmtk: bool) -> list[list[str]]:
        if dcmtk:
            return [storescu_argv(sender, f, config) for f in folders]
        return [pynetdicom_argv(sender, f, PYNETDICOM_LIMIT) for f in folders]

    def via_pacsguard(
        *,
        tls: bool = False,
        user: bool = False,
        in_memory: bool = False,
        dcmtk: bool = True,
        server: Pacsguard = pacsguard,
    ) -> Callable[[list[Path], Path], Run]:
        pacsguard = server

        def run(folders: list[Path], scratch: Path) -> Run:
            where = placed(scratch, in_memory)
            pacsguard.start(where / "pacsguard")
            try:
                sender = pacsguard.sender(tls=tls, user=user)
                sent = send(clients(sender, folders, dcmtk), dcmtk=dcmtk)
            finally:
                pacsguard.stop()
            try:
                return Run(sent.seconds, pacsguard.fsck(), sent.latencies_ms)
            finally:
                if where != scratch:
                    shutil.rmtree(where, ignore_errors=True)

        return run

    def via_orthanc(
        in_memory: bool = False, dcmtk: bool = True
    ) -> Callable[[list[Path], Path], Run]:
        def run(folders: list[Path], scratch: Path) -> Run:
            where = placed(scratch, in_memory)
            orthanc.start(where / "orthanc")
            try:
                sent = send(clients(orthanc.sender(), folders, dcmtk), dcmtk=dcmtk)
                held = orthanc.counts()["instances"]
            finally:
                orthanc.stop()
                if where != scratch:
                    shutil.rmtree(where, ignore_errors=True)
            return Run(sent.seconds, held, sent.latencies_ms)

        return run

    def via_storescp(scp: Storescp) -> Callable[[list[Path], Path], Run]:
        def run(folders: list[Path], scratch: Path) -> Run:
            output = scratch / "storescp"
            scp.start(output)
            try:
                sender = Sender(scp.port, "STORESCP", PLAIN_AET)
                sent = send(clients(sender, folders, True), dcmtk=True)
            finally:
                scp.stop()
            held = sum(1 for p in output.iterdir() if p.is_file())
            return Run(sent.seconds, held, sent.latencies_ms)

        return run

    targets = [
        IngestTarget(PACSGUARD_USER, via_pacsguard(user=True)),
        IngestTarget(PACSGUARD_WORKERS, via_pacsguard(user=True, server=pacsguard.with_workers(2))),
        IngestTarget(PACSGUARD_ADDRESS, via_pacsguard()),
        IngestTarget(PACSGUARD_TLS, via_pacsguard(tls=True, user=True)),
        IngestTarget(ORTHANC, via_orthanc()),
        IngestTarget(STORESCP, via_storescp(plain), single_sender_only=True),
    ]
    if synced is not None:
        targets.append(IngestTarget(STORESCP_FSYNC, via_storescp(synced), single_sender_only=True))
    if tmpfs is not None:
        targets.append(IngestTarget(PACSGUARD_TMPFS, via_pacsguard(in_memory=True)))
        targets.append(IngestTarget(ORTHANC_TMPFS, via_orthanc(in_memory=True)))
    if earlier is not None:
        label, old = earlier
        targets.append(
            IngestTarget(
                f"pacsguard {label} (plaintext, user identity)",
                via_pacsguard(user=True, server=old),
            )
        )
        if tmpfs is not None:
            targets.append(
                IngestTarget(
                    f"pacsguard {label} (plaintext, data on tmpfs)",
                    via_pacsguard(in_memory=True, server=old),
                )
            )
    targets += [
        IngestTarget(
            PACSGUARD_PYNETDICOM,
            via_pacsguard(user=True, dcmtk=False),
            baseline=ORTHANC_PYNETDICOM,
            single_sender_only=True,
            limit=PYNETDICOM_LIMIT,
        ),
        IngestTarget(
            ORTHANC_PYNETDICOM,
            via_orthanc(dcmtk=False),
            baseline=ORTHANC_PYNETDICOM,
            single_sender_only=True,
            limit=PYNETDICOM_LIMIT,
        ),
    ]
    return targets


def tmpfs_dir() -> Path | None:
    """/dev/shm when it is a writable tmpfs (Linux), for the diagnostic rows."""
    shm = Path("/dev/shm")
    try:
        with shm.joinpath(".pacsguard-probe").open("wb"):
            pass
        shm.joinpath(".pacsguard-probe").unlink()
    except OSError:
        return None
    return shm


def measure_ingest(
    targets: Sequence[IngestTarget], folders: list[Path], count: int, scratch: Path, repeats: int
) -> list[dict[str, Any]]:
    """`repeats` rounds; in each, every target receives the set once (one client per folder,
    all at once), the target order rotated per round so that every pair of targets is
    interleaved. Ratios are per round (run by run), then their median and range."""
    for folder in folders:
        warm_page_cache(folder)  # in the page cache for every target alike
    runs: dict[str, list[float]] = {t.name: [] for t in targets}
    held: dict[str, list[int]] = {t.name: [] for t in targets}
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    failures: dict[str, list[str]] = {t.name: [] for t in targets}
    for repeat in range(repeats):
        shift = repeat % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            run_dir = scratch / f"run-{repeat}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            # storescp writes without fsync: unless the dirty pages it (or a removed run
            # folder) left are written back first, the next target's fsyncs pay for them.
            os.sync()
            try:
                done = target.run(folders, run_dir)
            except RuntimeError as error:  # a client failed: say why, and run it once more
                print(f"  {target.name}: FAILED, run again: {error}", flush=True)
                failures[target.name].append(str(error)[:500])
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                done = target.run(folders, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            runs[target.name].append(done.seconds)
            held[target.name].append(done.held)
            expected = min(count, target.limit or count)
            latencies[target.name] += done.latencies_ms
            print(
                f"  {target.name}: {done.seconds:.2f}s, holds {done.held}/{expected}, "
                f"C-STORE p50 {percentile(done.latencies_ms, 50):.2f} ms",
                flush=True,
            )
    rows: list[dict[str, Any]] = []
    for target in targets:
        median = statistics.median(runs[target.name])
        lat = latencies[target.name]
        expected = min(count, target.limit or count)
        rows.append(
            {
                "target": target.name,
                "baseline": target.baseline,
                "runs_s": [round(s, 3) for s in runs[target.name]],
                "median_s": round(median, 3),
                "instances": expected,
                "instances_per_s": round(expected / median, 1),
                "held_after_each_run": held[target.name],
                "verified": all(h == expected for h in held[target.name]),
                "failed_runs_repeated": failures[target.name],
                "store_latency_ms": {
                    "p50": round(percentile(lat, 50), 2),
                    "p99": round(percentile(lat, 99), 2),
                    "max": round(max(lat, default=0.0), 2),
                    "stores": len(lat),
                },
            }
        )
    by_name: dict[str, float] = {r["target"]: r["instances_per_s"] for r in rows}
    for row in rows:
        for key, name in (
            ("vs_orthanc", row["baseline"]),
            ("vs_storescp", STORESCP),
            ("vs_storescp_fsync", STORESCP_FSYNC),
            ("vs_orthanc_tmpfs", ORTHANC_TMPFS),
        ):
            if name in by_name:
                row[key] = round(by_name[row["target"]] / by_name[name], 3)
        baseline = runs.get(row["baseline"])
        if baseline:
            # Runs of one round follow each other within seconds: their ratios drift less
            # with the machine than a ratio of medians taken over the whole benchmark.
            paired = [o / s for o, s in zip(baseline, runs[row["target"]], strict=True)]
            row["vs_orthanc_run_by_run"] = {
                "median": round(statistics.median(paired), 3),
                "min": round(min(paired), 3),
                "max": round(max(paired), 3),
                "pairs": len(paired),
            }
    return rows


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (a supervisor's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def run_syncs(
    work: Path,
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    synced: Storescp | None,
    count: int,
    seed: int,
) -> dict[str, Any]:
    """fsync-family calls per acknowledged instance, counted by strace, for each server."""
    source = work / "syncs-source"
    write_ingest_set(source, count, 64, seed + 3)
    rows: list[dict[str, Any]] = []

    def measure(name: str, pid: int | list[int], argv: list[str], held: Callable[[], int]) -> None:
        counts = count_syncs(pid, lambda: run_timed(argv), work / f"syncs-{len(rows)}.txt")
        if counts is None:
            return
        stored = held()
        total = sum(counts.values())
        rows.append(
            {
                "target": name,
                "calls": counts,
                "instances": stored,
                "per_instance": round(total / max(stored, 1), 2),
            }
        )

    pacsguard.start(work / "syncs-pacsguard")
    try:
        assert pacsguard.proc is not None
        argv = pacsguard.store_plain([source])
        measure("pacsguard (plaintext, address AE)", pacsguard.proc.pid, argv, lambda: count)
    finally:
        pacsguard.stop()
    workers = pacsguard.with_workers(2)  # the supervisor's syncs and each worker's
    workers.start(work / "syncs-pacsguard-workers")
    try:
        assert workers.proc is not None
        argv = workers.store_plain([source])
        pids = [workers.proc.pid, *_children(workers.proc.pid)]
        measure("pacsguard, 2 workers (plaintext, address AE)", pids, argv, lambda: count)
    finally:
        workers.stop()
    orthanc.start(work / "syncs-orthanc")
    try:
        assert orthanc.proc is not None
        measure(
            "Orthanc 1.10 (SyncStorageArea)",
            orthanc.proc.pid,
            orthanc.store([source]),
            lambda: orthanc.counts()["instances"],
        )
    finally:
        orthanc.stop()
    if synced is not None:
        output = work / "syncs-storescp"
        synced.start(output)
        try:
            assert synced.proc is not None
            argv = storescu(synced.port, "STORESCP", PLAIN_AET, [source])
            measure(
                "storescp + fsync per file",
                synced.proc.pid,
                argv,
                lambda: sum(1 for p in output.iterdir() if p.is_file()),
            )
        finally:
            synced.stop()
    shutil.rmtree(source)
    return {"instances": count, "rows": rows}
