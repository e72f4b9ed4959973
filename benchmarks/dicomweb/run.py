"""Run the DICOMweb benchmark: load both servers, then >= 7 interleaved pairs of every
measurement (QIDO-RS shapes, WADO-RS series, STOW-RS instances at concurrency 1 and 4)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._measure import percentile
from benchmarks.archive.peers import Processes
from benchmarks.dicomweb import data, workload
from benchmarks.dicomweb.servers import (
    Server,
    orthanc_rest,
    start_orthanc,
    start_pacsguard,
    vm_kib,
)

CONCURRENCY = (1, 4)
LOAD_BATCH = 100
#: The measurements a run can be limited to (`only`).
PARTS = ("qido", "wado", "stow")


def _load(server: Server, files: Sequence[bytes]) -> float:
    """STOW-RS `files` in batches of LOAD_BATCH from 2 clients; instances per second."""
    batches = [files[i : i + LOAD_BATCH] for i in range(0, len(files), LOAD_BATCH)]
    requests = [workload.stow(b) for b in batches]
    timed = workload.run(server, requests, 2)
    return len(files) / timed.seconds


def _check_queries(server: Server, shapes: Sequence[data.QueryShape]) -> dict[str, int]:
    """Per shape, how many queries returned another number of studies than expected."""
    wrong: dict[str, int] = {}
    with server.client() as client:
        for shape in shapes:
            wrong[shape.name] = sum(
                workload.qido_count(client, params) != expected
                for params, expected in shape.queries
            )
    return wrong


def run(
    work: Path,
    *,
    studies: int = 10_000,
    pairs: int = 7,
    per_shape: int = 40,
    series: int = 4,
    per_series: int = 16,
    stow_per_run: int = 16,
    seed: int = 2026,
    orthanc_https: bool = True,
    pacsguard_nodelay: bool = False,
    only: frozenset[str] = frozenset(PARTS),
) -> dict[str, Any]:
    load_before = os.getloadavg()
    print(f"data: {studies} studies, {series} series of {per_series} 512x512 images", flush=True)
    index = data.index_data(work, studies, seed)
    shapes = data.query_shapes(index.studies, per_shape, seed)
    wado = data.wado_series(series, per_series, seed)
    stow_source = data.StowSource(seed)
    processes = Processes()
    measured: dict[str, dict[str, list[workload.Timed]]] = {}
    result: dict[str, Any] = {"load": {}, "query_check": {}, "rss": {}}
    try:
        servers = [start_pacsguard(work, processes), start_orthanc(work, processes)]
        if orthanc_https:
            servers.append(start_orthanc(work, processes, secured=True))
        if pacsguard_nodelay:
            servers.append(start_pacsguard(work, processes, nodelay=True))
        for server in servers:
            started = time.perf_counter()
            rate = _load(server, index.files)
            for s in wado:
                workload.run(server, [workload.stow(s.files)], 1)
            result["load"][server.name] = {
                "index_instances_per_s": round(rate, 1),
                "seconds": round(time.perf_counter() - started, 1),
                "rss_after_load_mib": round(vm_kib(server.pid, "VmRSS") / 1024, 1),
            }
            print(f"loaded {server.name}: {rate:.0f} instances/s", flush=True)
        for server in servers[1:]:
            if not server.name.startswith("Orthanc"):
                continue
            held = orthanc_rest(server, "/statistics")
            assert isinstance(held, dict)
            result["load"][server.name]["studies_held"] = held["CountStudies"]
        for server in servers:
            result["query_check"][server.name] = _check_queries(server, shapes)
        print(f"query check (wrong counts): {result['query_check']}", flush=True)
        for pair in range(pairs):
            order = servers[pair % len(servers) :] + servers[: pair % len(servers)]
            if pair % 2:
                order.reverse()
            for concurrency in CONCURRENCY:
                for shape in shapes if "qido" in only else []:
                    requests = [workload.qido(q) for q, _ in shape.queries]
                    for server in order:
                        timed = workload.run(server, requests, concurrency)
                        key = f"QIDO-RS {shape.name}|{concurrency}"
                        measured.setdefault(key, {}).setdefault(server.name, []).append(timed)
                for server in order if "wado" in only else []:
                    requests = [workload.wado_series(s) for s in wado] * 2
                    timed = workload.run(server, requests, concurrency)
                    key = f"WADO-RS series|{concurrency}"
                    measured.setdefault(key, {}).setdefault(server.name, []).append(timed)
                for server in order if "stow" in only else []:
                    requests = [workload.stow([f]) for f in stow_source.take(stow_per_run)]
                    timed = workload.run(server, requests, concurrency)
                    key = f"STOW-RS 1 instance/request|{concurrency}"
                    measured.setdefault(key, {}).setdefault(server.name, []).append(timed)
            print(f"pair {pair + 1}/{pairs} done, load {os.getloadavg()[0]:.1f}", flush=True)
        for server in servers:
            result["rss"][server.name] = {
                "peak_rss_mib": round(vm_kib(server.pid, "VmHWM") / 1024, 1),
                "rss_end_mib": round(vm_kib(server.pid, "VmRSS") / 1024, 1),
            }
    finally:
        processes.stop_all()
    result["rows"] = [_row(key, by_server) for key, by_server in measured.items()]
    result["parameters"] = {
        "studies": studies, "pairs": pairs, "queries_per_shape": per_shape,
        "series": series, "instances_per_series": per_series,
        "series_mb": round(wado[0].nbytes / 1e6, 2), "stow_per_run": stow_per_run,
        "stow_instance_bytes": len(stow_source.take(1)[0]), "seed": seed,
        "cpus": os.cpu_count(), "only": sorted(only),
    }  # fmt: skip
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    return result


def _rate(key: str, timed: workload.Timed) -> float:
    if key.startswith("WADO"):
        return timed.received / 1e6 / timed.seconds
    return timed.count / timed.seconds


def _row(key: str, by_server: dict[str, list[workload.Timed]]) -> dict[str, Any]:
    operation, concurrency = key.split("|")
    unit = (
        "MB/s"
        if operation.startswith("WADO")
        else ("instances/s" if operation.startswith("STOW") else "requests/s")
    )
    row: dict[str, Any] = {"operation": operation, "concurrency": int(concurrency), "unit": unit}
    rates: dict[str, list[float]] = {}
    for name, runs in by_server.items():
        rates[name] = [_rate(key, t) for t in runs]
        latencies = [x for t in runs for x in t.latencies]
        row[name] = {
            "rate_median": round(statistics.median(rates[name]), 2),
            "rates": [round(r, 2) for r in rates[name]],
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "requests": len(latencies),
        }
    row["ratios"] = {}
    ours = [n for n in rates if n.startswith("pacsguard")]
    for mine in ours:
        for name, theirs in rates.items():
            if name in ours:
                continue
            ratios = [a / b for a, b in zip(rates[mine], theirs, strict=True)]
            row["ratios"][f"{mine} / {name}"] = {
                "median": round(statistics.median(ratios), 3),
                "range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
    return row
