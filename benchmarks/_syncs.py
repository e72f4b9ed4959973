"""Count the durability system calls a running server makes while a client stores to it.

Ingest speed with fsync on is mostly the number of times a server waits for the disk, so the
archive benchmark reports, next to instances/s, how many fsync-family calls each server made per
acknowledged instance (strace attached to every thread of the server; attaching slows the server,
so these runs are not timed).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SYNC_CALLS = ("fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "msync")


def parse_summary(text: str) -> dict[str, int]:
    """Calls per syscall from `strace -c` output (the "calls" column, zero rows left out)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[-1] in ("total", "syscall") or not fields[3].isdigit():
            continue
        counts[fields[-1]] = int(fields[3])
    return counts


def count_syncs(
    pid: int | Sequence[int], client: Callable[[], object], output: Path
) -> dict[str, int] | None:
    """Run `client()` while strace counts the sync calls of process `pid` (or of each of
    several: a supervisor and its workers) and their threads; None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    pids = [pid] if isinstance(pid, int) else list(pid)
    tracer = subprocess.Popen(
        [strace, "-f", "-c", "-e", f"trace={','.join(SYNC_CALLS)}", "-o", str(output),
         *(arg for p in pids for arg in ("-p", str(p)))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # attached to every thread before the first instance arrives
        client()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
    return parse_summary(output.read_text())
