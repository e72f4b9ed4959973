"""Run a command and measure its wall time and peak RSS (its whole process tree's largest), or
each process of its tree."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class ProcessPeak:
    """One process of a measured command's tree, as last sampled before it ended."""

    pid: int
    role: str
    peak_rss_kib: int
    #: User + system CPU time at the last sample (at most one sampling interval short).
    cpu_seconds: float


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) of every process now."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def _read_peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def measure_processes(
    argv: list[str],
    stdout_path: Path,
    role: Callable[[list[str]], str],
    interval: float = 0.2,
) -> tuple[Measured, list[ProcessPeak]]:
    """`measure`, and every process of the command's tree sampled each `interval` s: its peak
    RSS (VmHWM, exact up to its last sample) and CPU time; `role(cmdline)` names it."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(stdout_path), *argv],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, ProcessPeak] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            table = _proc_table()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _) in table.items():
                children.setdefault(ppid, []).append(pid)
            todo = list(children.get(launcher.pid, []))
            while todo:
                pid = todo.pop()
                todo += children.get(pid, [])
                rss = _read_peak_rss(pid)
                known = seen.get(pid)
                name = known.role if known else role(_cmdline(pid))
                seen[pid] = ProcessPeak(
                    pid, name, max(rss, known.peak_rss_kib if known else 0), table[pid][1]
                )

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = launcher.communicate()
    stop.set()
    sampler.join()
    if launcher.returncode != 0 or not out.strip():
        raise RuntimeError(f"measurement of {argv[0]} failed: {err[-2000:]}")
    data = json.loads(out.strip().splitlines()[-1])
    measured = Measured(
        argv, data["rc"], data["seconds"], data["peak_rss_kib"], stdout_path, data["cpu_seconds"]
    )
    return measured, sorted(seen.values(), key=lambda p: p.pid)


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-quantile (0 < q <= 1) of `values` by nearest rank, the one definition every
    benchmark reports (p50, p99: the smallest value with at least q of them at or below it);
    0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(round(len(ordered) * q, 9)))  # ceil(n q), at least the first
    return ordered[min(len(ordered), rank) - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """n, p50/p90/p95/p99, max and mean in milliseconds of latencies given in seconds."""
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    summary: dict[str, float] = {"n": len(ms)}
    for q in (50, 90, 95, 99):
        summary[f"p{q}_ms"] = round(percentile(ms, q / 100), 1)
    summary["max_ms"] = round(max(ms), 1)
    summary["mean_ms"] = round(sum(ms) / len(ms), 1)
    return summary


def wait_port(host: str, port: int, timeout: float) -> None:
    """Return once `host:port` accepts a connection; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:g} s")
