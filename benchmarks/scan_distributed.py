"""One scan process against `--cluster local:N`, on one lab, in one run.

Lab: N live simulated PACS (the default mix of profiles, `pacsguard lab serve` in its own
process) on 127.84.0.1 upwards, port 11112. Each host builds its synthetic archive on its first
C-FIND, so one unmeasured scan warms the lab up first. Then, with the same options:
- `pacsguard scan` in one process (asyncio, one core);
- `pacsguard scan --cluster local:1` (the same, through Dask: its overhead);
- `pacsguard scan --cluster local:2` (two worker processes).
Measured: wall time and hosts per second; checked: every run holds every target once with the
same verdict (speaks DICOM, counts) per host.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks._measure import Measured, measure, measure_processes
from benchmarks.scan_vs_nmap import _pacsguard, start_lab

BASE = "127.84.0.1"
PORT = 11112


def _differences(ours: dict[tuple[str, int], Any], reference: dict[tuple[str, int], Any]) -> int:
    return int(sum(ours.get(k) != v for k, v in reference.items())) + len(
        set(ours) - set(reference)
    )


def _verdicts(path: Path) -> dict[tuple[str, int], Any]:
    out: dict[tuple[str, int], Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        key = (r["host"], r["port"])
        if key in out:
            raise RuntimeError(f"{path.name}: {key} written twice")
        exposure = r["exposure"] or {}
        out[key] = (r["dicom"], exposure.get("studies"), exposure.get("instances"))
    return out


def run(work: Path, hosts: int, seed: int, shard_size: int = 32) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    lab, truth_path = start_lab(work, hosts, seed, base=BASE, port=PORT)
    try:
        truth = json.loads(truth_path.read_text())
        targets = work / "targets.txt"
        targets.write_text("".join(f"{h['address']}:{h['port']}\n" for h in truth["hosts"]))
        # The CLI's default timeouts: the lab is one single-threaded process sharing the cores
        # with the scanners, and at 2 s its slowest answers (second association of a
        # called-AE-check host during the C-FIND burst) time out in some runs and not others.
        common = ["-iL", str(targets), "--concurrency", "256", "--connect-timeout", "3"]
        common += ["--read-timeout", "5", "--total-timeout", "60", "--fail-on", "critical"]
        measure([_pacsguard(), "scan", *common], work / "warm-up.jsonl")
        runs: dict[str, Measured] = {}
        outputs: dict[str, Path] = {}
        for name, extra in [
            ("1 process", []),
            ("--cluster local:1", ["--cluster", "local:1"]),
            ("--cluster local:2", ["--cluster", "local:2"]),
        ]:
            out = work / f"{name.replace(' ', '_').replace(':', '').strip('-')}.jsonl"
            if extra:
                extra = [*extra, "--shard-size", str(shard_size), "--state-dir", str(work)]
                extra += ["-o", str(out)]
                runs[name] = measure([_pacsguard(), "scan", *common, *extra], work / "stdout")
            else:
                runs[name] = measure([_pacsguard(), "scan", *common], out)
            outputs[name] = out
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(10)
        except subprocess.TimeoutExpired:
            lab.kill()
    verdicts = {name: _verdicts(path) for name, path in outputs.items()}
    reference = verdicts["1 process"]
    rows = [
        {
            "run": name,
            "targets": len(verdicts[name]),
            "seconds": round(m.seconds, 2),
            "hosts_per_s": round(len(truth["hosts"]) / m.seconds, 1),
            "peak_rss_mib_largest_process": round(m.peak_rss_kib / 1024, 1),
            "hosts_with_other_verdict_than_1_process": _differences(verdicts[name], reference),
            "exit_code": m.rc,
        }
        for name, m in runs.items()
    ]
    return {
        "benchmark": "scan-distributed",
        "lab": {"live_hosts": len(truth["hosts"]), "port": PORT, "shard_size": shard_size},
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 1)},
    }


def markdown(result: dict[str, Any]) -> str:
    lab = result["lab"]
    lines = [
        "# Scan benchmark: one process vs Dask `--cluster local:N`",
        "",
        f"Lab: {lab['live_hosts']} live simulated PACS (default mix), port {lab['port']}; "
        f"shards of {lab['shard_size']} targets. Machine: {result['machine']['cpus']} CPUs, "
        f"load average {result['machine']['load_average_1m']} at the end (shared machine).",
        "",
        "| run | targets | seconds | hosts/s | hosts with another verdict than 1 process |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['run']} | {r['targets']} | {r['seconds']} | {r['hosts_per_s']} | "
            f"{r['hosts_with_other_verdict_than_1_process']} |"
        )
    lines += [
        "",
        "A scan of a few hundred hosts is bound by its slowest hosts' timeouts (a silent host",
        "holds a probe for the read timeout, twice: plaintext, then TLS), which one event loop",
        "overlaps all at once. The shards of `--cluster` now overlap them too (coroutines on",
        "each worker's loop, sharing its probe slots; all 10 shards run at once), so what is",
        "left is mostly the cluster's start: the LocalCluster alone took 0.5-5 s here, by load,",
        "then worker processes import pacsguard. It pays where one core is the limit and across",
        "machines;",
        "on two shared cores, with the lab on the same cores, it cannot show that. One run",
        "each, on a shared machine: no ratio is claimed from this table.",
        "",
    ]
    return "\n".join(lines)


#: A slice of an internet-like lab: mostly closed ports, a few tarpits (sparse: every shard
#: of 256 targets is a few fast answers and, often, one slow tail).
SPARSE_NETWORK = "127.85.0.0/19"


def run_sparse(work: Path, seed: int, pairs: int, network: str = SPARSE_NETWORK) -> dict[str, Any]:
    """1 process against `--cluster local:2` on a slice of the internet lab, in interleaved
    pairs; the same total concurrency (1024; 512 per worker) and the same outputs (-o file,
    standard output)."""
    from benchmarks import survey_internet as survey

    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    lab, truth_path = survey.start_lab(work, seed, network)
    rows: list[dict[str, Any]] = []
    try:
        for pair in range(pairs):
            result: dict[str, Any] = {"pair": pair}
            for name, extra in [
                ("one", survey.scan_args()),
                (
                    "local2",
                    [
                        *survey.scan_args(concurrency=survey.CONCURRENCY // 2),
                        *("--cluster", "local:2", "--state-dir", str(work / "runs")),
                    ],
                ),
            ]:
                out = work / f"{name}-{pair}.jsonl"
                m, procs = measure_processes(
                    [_pacsguard(), "scan", network, *extra, "-o", str(out)],
                    work / f"{name}-{pair}.out",
                    survey.process_role,
                )
                result[name] = {
                    "seconds": round(m.seconds, 2),
                    "cpu_seconds": round(sum(p.cpu_seconds for p in procs), 2),
                    "records": sum(1 for _ in out.open(encoding="utf-8")),
                }
                out.unlink()
                (work / f"{name}-{pair}.out").unlink()
            result["ratio"] = round(result["local2"]["seconds"] / result["one"]["seconds"], 3)
            rows.append(result)
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
    truth = json.loads(truth_path.read_text())
    ratios = sorted(r["ratio"] for r in rows)
    return {
        "benchmark": "scan-distributed-sparse",
        "lab": {"network": network, "listening": truth["listening"], "kinds": truth["kinds"]},
        "pairs": rows,
        "ratio_local2_to_one_median": statistics.median(ratios),
        "ratio_range": [ratios[0], ratios[-1]],
        "cpu_ratio_median": statistics.median(
            r["local2"]["cpu_seconds"] / r["one"]["cpu_seconds"] for r in rows
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def markdown_sparse(result: dict[str, Any]) -> str:
    lab = result["lab"]
    m = result["machine"]
    lines = [
        "# Scan benchmark: one process vs `--cluster local:2` on a sparse network",
        "",
        f"Lab: the internet lab on {lab['network']} (ports 104, 11112, 4242, 2762; "
        f"{lab['listening']} listening: "
        f"{', '.join(f'{k} {v}' for k, v in lab['kinds'].items())}; the rest closed). Same "
        "options for both (1024 connections in flight in all: `local:2` has 512 per worker; "
        "-o file and standard output). Interleaved pairs. Machine: "
        f"{m['cpus']} CPUs shared with other developers; load average "
        f"{', '.join(map(str, m['load_average_before']))} before, "
        f"{', '.join(map(str, m['load_average_after']))} after.",
        "",
        "| pair | 1 process s | local:2 s | local:2 / 1 process | CPU s 1 process "
        "| CPU s local:2 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["pairs"]:
        lines.append(
            f"| {r['pair']} | {r['one']['seconds']} | {r['local2']['seconds']} | {r['ratio']} | "
            f"{r['one']['cpu_seconds']} | {r['local2']['cpu_seconds']} |"
        )
    lo, hi = result["ratio_range"]
    lines += [
        "",
        f"Wall time local:2 / 1 process: median {result['ratio_local2_to_one_median']:.2f} "
        f"(range {lo:.2f}-{hi:.2f}); CPU time (all processes) local:2 / 1 process: median "
        f"{result['cpu_ratio_median']:.2f}.",
        "",
    ]
    return "\n".join(lines)
