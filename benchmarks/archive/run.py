"""The whole archive benchmark, in one run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
from tests.interop.peers import (
    executable,
)

from benchmarks.archive.data import write_ingest_set
from benchmarks.archive.find import run_find
from benchmarks.archive.ingest import ingest_targets, measure_ingest, run_syncs, tmpfs_dir
from benchmarks.archive.peers import Orthanc, Pacsguard, Processes, Storescp, build_fsync_shim
from benchmarks.archive.report import METHOD_NOTES, evaluate
from benchmarks.archive.rss import run_rss

# --- the run ------------------------------------------------------------------------------------


def run(
    work: Path,
    *,
    repeats: int = 3,
    find_studies: int = 100_000,
    find_queries: int = 200,
    big_study_mib: int = 2048,
    big_instances: int = 8,
    seed: int = 2026,
) -> dict[str, Any]:
    processes = Processes()
    load_before = os.getloadavg()
    notes: list[str] = list(METHOD_NOTES)
    # SIGTERM must unwind through `finally` too, or the peers outlive the benchmark.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        pacsguard = Pacsguard.prepare(work, processes)
        orthanc = Orthanc(processes)
        shim = build_fsync_shim(work)
        if shim is None:
            notes.append("no C compiler: the 'storescp + fsync per file' row is missing")
        tmpfs = tmpfs_dir()
        if tmpfs is None:
            notes.append("no writable /dev/shm: the tmpfs diagnostic rows are missing")
        targets = ingest_targets(
            pacsguard,
            orthanc,
            Storescp(processes),
            Storescp(processes, preload=shim) if shim is not None else None,
            tmpfs,
        )
        ingest = []
        for label, count, size in (("small", 1000, 64), ("512x512", 300, 512)):
            source = work / f"ingest-{label}"
            total = write_ingest_set(source, count, size, seed)
            print(
                f"ingest: {count} instances of {size}x{size} ({total / 2**20:.0f} MiB)", flush=True
            )
            rows = measure_ingest(targets, source, count, work / "scratch", repeats)
            ingest.append(
                {"set": label, "instances": count, "matrix": size, "bytes": total, "rows": rows}
            )
            shutil.rmtree(source)
        syncs = run_syncs(
            work, pacsguard, orthanc, Storescp(processes, preload=shim) if shim else None, 200, seed
        )
        if not syncs["rows"]:
            notes.append("strace is not installed: no counts of sync calls")
        find = run_find(work, pacsguard, orthanc, find_studies, find_queries, seed, notes)
        rss = run_rss(work, pacsguard, orthanc, big_study_mib, big_instances, seed, notes)
    finally:
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous)
    result: dict[str, Any] = {
        "benchmark": "archive-vs-peers",
        "ingest": ingest,
        "syncs": syncs,
        "find": find,
        "rss": rss,
        "notes": notes,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": _versions(),
    }
    result["targets"] = evaluate(result)
    return result


def _versions() -> dict[str, str]:
    dcmtk = subprocess.run(
        [str(executable("storescu")), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    orthanc = subprocess.run(
        [str(executable("Orthanc")), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "python": sys.version.split()[0],
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "dcmtk": dcmtk[0].strip("$ ") if dcmtk else "?",
        "orthanc": orthanc[0] if orthanc else "?",
    }
