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

# --- 1. ingest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestTarget:
    name: str
    run: Callable[[Path, Path], tuple[float, int]]  # (input dir, scratch dir) -> (s, held)


#: Diagnostic rows: the same servers with their data on tmpfs, where a sync costs nothing and
#: no storage device is involved, so that a gap on disk splits into processing and storage.
PACSGUARD_TMPFS = "pacsguard (plaintext, data on tmpfs)"
ORTHANC_TMPFS = "Orthanc 1.10 (storage on tmpfs)"


def ingest_targets(
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    plain: Storescp,
    synced: Storescp | None,
    tmpfs: Path | None = None,
) -> list[IngestTarget]:
    def placed(scratch: Path, in_memory: bool) -> Path:
        if not in_memory or tmpfs is None:
            return scratch
        return Path(tempfile.mkdtemp(prefix="pacsguard-bench-", dir=tmpfs))

    def via_pacsguard(
        tls: bool, in_memory: bool = False
    ) -> Callable[[Path, Path], tuple[float, int]]:
        def run(source: Path, scratch: Path) -> tuple[float, int]:
            where = placed(scratch, in_memory)
            pacsguard.start(where / "pacsguard")
            try:
                store = pacsguard.store_tls if tls else pacsguard.store_plain
                seconds = run_timed(store([source]))
            finally:
                pacsguard.stop()
            try:
                return seconds, pacsguard.fsck()
            finally:
                if where != scratch:
                    shutil.rmtree(where, ignore_errors=True)

        return run

    def via_orthanc(in_memory: bool = False) -> Callable[[Path, Path], tuple[float, int]]:
        def run(source: Path, scratch: Path) -> tuple[float, int]:
            where = placed(scratch, in_memory)
            orthanc.start(where / "orthanc")
            try:
                seconds = run_timed(orthanc.store([source]))
                held = orthanc.counts()["instances"]
            finally:
                orthanc.stop()
                if where != scratch:
                    shutil.rmtree(where, ignore_errors=True)
            return seconds, held

        return run

    def via_storescp(scp: Storescp) -> Callable[[Path, Path], tuple[float, int]]:
        def run(source: Path, scratch: Path) -> tuple[float, int]:
            output = scratch / "storescp"
            scp.start(output)
            try:
                seconds = run_timed(storescu(scp.port, "STORESCP", PLAIN_AET, [source]))
            finally:
                scp.stop()
            return seconds, sum(1 for p in output.iterdir() if p.is_file())

        return run

    targets = [
        IngestTarget("pacsguard (plaintext, address AE)", via_pacsguard(tls=False)),
        IngestTarget("pacsguard (TLS, user identity)", via_pacsguard(tls=True)),
        IngestTarget("Orthanc 1.10 (SyncStorageArea)", via_orthanc()),
        IngestTarget("storescp (no fsync)", via_storescp(plain)),
    ]
    if synced is not None:
        targets.append(IngestTarget("storescp + fsync per file", via_storescp(synced)))
    if tmpfs is not None:
        targets.append(IngestTarget(PACSGUARD_TMPFS, via_pacsguard(tls=False, in_memory=True)))
        targets.append(IngestTarget(ORTHANC_TMPFS, via_orthanc(in_memory=True)))
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
    targets: Sequence[IngestTarget], source: Path, count: int, scratch: Path, repeats: int
) -> list[dict[str, Any]]:
    """Median wall time of `repeats` storescu runs per target, target order rotated per run."""
    warm_page_cache(source)  # in the page cache for every target alike
    runs: dict[str, list[float]] = {t.name: [] for t in targets}
    held: dict[str, list[int]] = {t.name: [] for t in targets}
    for repeat in range(repeats):
        shift = repeat % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            run_dir = scratch / f"run-{repeat}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            # storescp writes without fsync: unless the dirty pages it (or a removed run
            # folder) left are written back first, the next target's fsyncs pay for them.
            os.sync()
            seconds, stored = target.run(source, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            runs[target.name].append(seconds)
            held[target.name].append(stored)
            print(f"  {target.name}: {seconds:.2f}s, holds {stored}/{count}", flush=True)
    rows: list[dict[str, Any]] = []
    for target in targets:
        median = statistics.median(runs[target.name])
        rows.append(
            {
                "target": target.name,
                "runs_s": [round(s, 3) for s in runs[target.name]],
                "median_s": round(median, 3),
                "instances_per_s": round(count / median, 1),
                "held_after_each_run": held[target.name],
                "verified": all(h == count for h in held[target.name]),
            }
        )
    by_name: dict[str, float] = {r["target"]: r["instances_per_s"] for r in rows}
    for row in rows:
        for key, name in (
            ("vs_orthanc", "Orthanc 1.10 (SyncStorageArea)"),
            ("vs_storescp", "storescp (no fsync)"),
            ("vs_storescp_fsync", "storescp + fsync per file"),
            ("vs_orthanc_tmpfs", ORTHANC_TMPFS),
        ):
            if name in by_name:
                row[key] = round(by_name[row["target"]] / by_name[name], 3)
    orthanc = runs.get("Orthanc 1.10 (SyncStorageArea)")
    if orthanc:
        for row in rows:
            # Runs of one repeat follow each other within seconds: their ratios drift less with
            # the machine than a ratio of medians taken over the whole benchmark.
            paired = [o / s for o, s in zip(orthanc, runs[row["target"]], strict=True)]
            row["vs_orthanc_run_by_run"] = {
                "median": round(statistics.median(paired), 3),
                "min": round(min(paired), 3),
                "max": round(max(paired), 3),
            }
    return rows


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

    def measure(name: str, pid: int, argv: list[str], held: Callable[[], int]) -> None:
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
