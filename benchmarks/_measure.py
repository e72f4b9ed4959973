"""Run a command and measure its wall time and peak RSS (its whole process tree's largest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# A tiny launcher: runs argv as its only child, then reports the child's peak RSS. Measuring in a
# fresh process keeps one command's peak from leaking into the next (RUSAGE_CHILDREN is a max).
_LAUNCHER = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], "wb"))
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "seconds": elapsed, "peak_rss_kib": usage.ru_maxrss,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime}))
"""


@dataclass(frozen=True)
class Measured:
    argv: list[str]
    rc: int
    seconds: float
    peak_rss_kib: int
    stdout_path: Path
    #: User + system CPU time of the command's process tree (wall time is inflated on a shared
    #: machine; CPU time is the cost per target that scales out).
    cpu_seconds: float = 0.0


def measure(
    argv: list[str],
    stdout_path: Path,
    env: dict[str, str] | None = None,
    drop_env: tuple[str, ...] = (),
) -> Measured:
    """`argv`'s wall time, peak RSS and CPU; `env` added to and `drop_env` removed from ours."""
    full_env = {**os.environ, "TCP_NODELAY": "1", **(env or {})}
    for name in drop_env:
        full_env.pop(name, None)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(stdout_path), *argv],
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"measurement of {argv[0]} failed: {out.stderr[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    del started
    return Measured(
        argv, data["rc"], data["seconds"], data["peak_rss_kib"], stdout_path, data["cpu_seconds"]
    )
