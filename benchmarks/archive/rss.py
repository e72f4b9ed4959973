"""3. Peak RSS while receiving one large study."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from benchmarks.archive.data import write_big_study
from benchmarks.archive.peers import Orthanc, Pacsguard, run_timed, warm_page_cache

# --- 3. peak RSS --------------------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for {pid}")


@contextmanager
def rss_sampler(pid: int, interval: float = 0.05) -> Iterator[dict[str, int]]:
    """Sample VmRSS of `pid` while the block runs; the dict gets max_kib and samples."""
    found = {"max_kib": 0, "samples": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with suppress(OSError, RuntimeError):
                found["max_kib"] = max(found["max_kib"], _status_kib(pid, "VmRSS"))
                found["samples"] += 1
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()


def measure_rss(name: str, pid: int, argv: Sequence[str], total: int) -> dict[str, Any]:
    """Send the study; RSS of `pid` before, its largest sampled RSS during, VmHWM after."""
    before = _status_kib(pid, "VmRSS")
    with rss_sampler(pid) as sampled:
        seconds = run_timed(argv)
    hwm = _status_kib(pid, "VmHWM")
    return {
        "target": name,
        "seconds": round(seconds, 2),
        "mib_per_s": round(total / seconds / 2**20, 1),
        "rss_before_mib": round(before / 1024, 1),
        "rss_max_sampled_mib": round(sampled["max_kib"] / 1024, 1),
        "vm_hwm_mib": round(hwm / 1024, 1),
        "rss_samples": sampled["samples"],
    }


def run_rss(
    work: Path,
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    big_study_mib: int,
    big_instances: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any]:
    free = shutil.disk_usage(work).free
    wanted = big_study_mib << 20
    if free < 20 * 10**9:
        wanted = max(256 << 20, min(wanted, (free - (2 << 30)) // 4))
        notes.append(
            f"only {free / 10**9:.1f} GB free: the large study shrank to {wanted >> 20} MiB"
        )
    source = work / "big-study"
    total = write_big_study(source, big_instances, wanted // big_instances, seed)
    print(f"rss: {big_instances} instances, {total / 2**20:.0f} MiB", flush=True)
    warm_page_cache(source)
    pacsguard.start(work / "rss-pacsguard")
    try:
        assert pacsguard.proc is not None
        ours = measure_rss(
            "pacsguard serve", pacsguard.proc.pid, pacsguard.store_plain([source]), total
        )
    finally:
        pacsguard.stop()
    ours["held"] = pacsguard.fsck()
    shutil.rmtree(work / "rss-pacsguard")
    orthanc.start(work / "rss-orthanc")
    try:
        assert orthanc.proc is not None
        theirs = measure_rss("Orthanc 1.10", orthanc.proc.pid, orthanc.store([source]), total)
        theirs["held"] = orthanc.counts()["instances"]
    finally:
        orthanc.stop()
    rows = [ours, theirs]
    for row in rows:
        row["expected"] = big_instances
    shutil.rmtree(work / "rss-orthanc")
    shutil.rmtree(source)
    return {"instances": big_instances, "bytes": total, "rows": rows}
