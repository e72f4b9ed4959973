"""The whole archive benchmark, in one run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

import pydicom
import pynetdicom
from tests.interop.peers import (
    executable,
)

from benchmarks.archive.data import write_ingest_set
from benchmarks.archive.find import run_find
from benchmarks.archive.ingest import (
    ORTHANC,
    ORTHANC_PYNETDICOM,
    ingest_targets,
    measure_ingest,
    run_syncs,
    tmpfs_dir,
)
from benchmarks.archive.peers import (
    Orthanc,
    Pacsguard,
    Processes,
    Storescp,
    build_fsync_shim,
    export_source,
)
from benchmarks.archive.report import METHOD_NOTES, evaluate
from benchmarks.archive.rss import run_rss
from benchmarks.archive.senders import split_set

# --- the run ------------------------------------------------------------------------------------


#: The ingest sets: label, instances, matrix, concurrent storescu senders.
INGEST_SETS: Final = (
    ("small", 1000, 64, 1),
    ("512x512", 200, 512, 1),
    ("small, 4 senders", 2000, 64, 4),
    ("small, 8 senders", 2000, 64, 8),
)
PARTS: Final = ("ingest", "syncs", "find", "rss")


def run(
    work: Path,
    *,
    repeats: int = 7,
    find_studies: int = 100_000,
    find_queries: int = 200,
    big_study_mib: int = 2048,
    big_instances: int = 8,
    seed: int = 2026,
    only: Collection[str] = PARTS,
    sets: Collection[str] | None = None,
    targets_matching: str | None = None,
    compare_with: str | None = None,
) -> dict[str, Any]:
    """The benchmark's parts in `only`; ingest sets whose label is in `sets` (all by default),
    targets whose name contains `targets_matching` (alternatives separated by "|"; all by
    default; Orthanc is always kept, it is what the ratios are taken against). `compare_with`
    (a git revision) adds rows for pacsguard served from that revision's code."""
    processes = Processes()
    load_before = os.getloadavg()
    notes: list[str] = list(METHOD_NOTES)
    ingest: list[dict[str, Any]] = []
    syncs: dict[str, Any] | None = None
    find: dict[str, Any] | None = None
    rss: dict[str, Any] | None = None
    # SIGTERM must unwind through `finally` too, or the peers outlive the benchmark.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        pacsguard = Pacsguard.prepare(work, processes)
        # Orthanc 1.10 serves 4 associations at once by default ("DicomThreadsCount"); with 8
        # storescu at once one of them stalled mid-association until its pipe broke (47 s),
        # so it gets a thread per sender of the largest set (no effect on fewer senders).
        orthanc = Orthanc(processes, extra={"DicomThreadsCount": 8})
        shim = build_fsync_shim(work)
        if shim is None:
            notes.append("no C compiler: the 'storescp + fsync per file' row is missing")
        if "ingest" in only:
            tmpfs = tmpfs_dir()
            if tmpfs is None:
                notes.append("no writable /dev/shm: the tmpfs diagnostic rows are missing")
            earlier = None
            if compare_with is not None:
                src = export_source(compare_with, work / "earlier")
                earlier = (f"at {compare_with}", pacsguard.at(src))
            targets = ingest_targets(
                work,
                pacsguard,
                orthanc,
                Storescp(processes),
                Storescp(processes, preload=shim) if shim is not None else None,
                tmpfs,
                earlier,
            )
            if targets_matching:
                targets = [
                    t
                    for t in targets
                    if any(part in t.name for part in targets_matching.split("|"))
                    or t.name == ORTHANC
                    or (t.name == ORTHANC_PYNETDICOM and "pynetdicom" in targets_matching)
                ]
            for label, count, size, senders in INGEST_SETS:
                if sets is not None and label not in sets:
                    continue
                source = work / f"ingest-{label.replace(', ', '-').replace(' ', '-')}"
                total = write_ingest_set(source, count, size, seed)
                folders = split_set(source, senders) if senders > 1 else [source]
                print(
                    f"ingest: {count} instances of {size}x{size} ({total / 2**20:.0f} MiB), "
                    f"{senders} sender(s)",
                    flush=True,
                )
                # the pynetdicom rows on the first set only (small instances: Nagle's cost)
                chosen = [
                    t
                    for t in targets
                    if (senders == 1 or not t.single_sender_only)
                    and (t.limit is None or label == INGEST_SETS[0][0])
                ]
                rows = measure_ingest(chosen, folders, count, work / "scratch", repeats)
                ingest.append(
                    {
                        "set": label,
                        "instances": count,
                        "matrix": size,
                        "senders": senders,
                        "bytes": total,
                        "rows": rows,
                    }
                )
                shutil.rmtree(source)
        if "syncs" in only:
            synced = Storescp(processes, preload=shim) if shim else None
            syncs = run_syncs(work, pacsguard, orthanc, synced, 200, seed)
            if not syncs["rows"]:
                notes.append("strace is not installed: no counts of sync calls")
        if "find" in only:
            find = run_find(work, pacsguard, orthanc, find_studies, find_queries, seed, notes)
        if "rss" in only:
            rss = run_rss(work, pacsguard, orthanc, big_study_mib, big_instances, seed, notes)
    finally:
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous)
    result: dict[str, Any] = {
        "benchmark": "archive-vs-peers",
        "repeats": repeats,
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
