"""pacsguard's scanner against nmap's dicom-ping on one lab, in one run.

Lab: a /20 of loopback addresses (4,096) with the first N addresses live simulated PACS (a mix
of security profiles, served by `pacsguard lab serve` in its own process). Measured:
- nmap `--script +dicom-ping` over the /20 (its port scan + association per open port) and
  pacsguard's verification stage (`--no-echo --no-count`: association and AE policy), in
  interleaved pairs (the first tool alternates); the speed-up is the median of the per-pair
  ratios, with their range (this machine is shared and noisy);
- pacsguard full stage (echo + C-FIND counting);
- pacsguard verification over a /16 (65,536 targets, mostly closed) for peak RSS vs target count.
Verdicts compared per live host: "speaks DICOM" and "accepts any AE" (nmap's "Any AET is
accepted") against pacsguard's `dicom` and first-attempt acceptance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from benchmarks._measure import Measured, measure, wait_port

PORT = 11112
LAB_NET = "127.100.0.0/20"
LAB_BASE = "127.100.0.1"
WIDE_NET = "127.101.0.0/16"


def _pacsguard() -> str:
    return str(Path(sys.executable).with_name("pacsguard"))


def require_free(addresses: list[str], port: int) -> None:
    """Refuse to start where something already listens: another lab on the range (this machine
    is shared) would be scanned and counted as ours."""
    for address in addresses:
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((address, port)) == 0:
                raise RuntimeError(
                    f"{address}:{port} already answers: another lab uses this range; stop it "
                    "or move the benchmark's addresses"
                )


def start_lab(
    work: Path, hosts: int, seed: int, *, base: str = LAB_BASE, port: int = PORT
) -> tuple[subprocess.Popen[bytes], Path]:
    truth = work / "truth.json"
    log = (work / "lab.log").open("wb")
    proc = subprocess.Popen(
        [
            _pacsguard(),
            "lab",
            "serve",
            "--hosts",
            str(hosts),
            "--port",
            str(port),
            "--base-address",
            base,
            "--seed",
            str(seed),
            "--truth",
            str(truth),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    deadline = time.monotonic() + 120
    while not truth.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"lab failed to start; see {work / 'lab.log'}")
        time.sleep(0.2)
    wait_port(base, port, 30)
    return proc, truth


def parse_nmap(xml_path: Path) -> dict[str, dict[str, bool]]:
    verdicts: dict[str, dict[str, bool]] = {}
    root = ET.parse(xml_path).getroot()
    for host in root.iter("host"):
        address = host.find("address")
        if address is None:
            continue
        for port in host.iter("port"):
            state = port.find("state")
            if state is None or state.get("state") != "open":
                continue
            script = port.find("script[@id='dicom-ping']")
            elems = {e.get("key"): (e.text or "") for e in script.iter("elem")} if script else {}
            verdicts[address.get("addr", "")] = {
                "dicom": "dicom" in elems,
                "any_ae": "Any AET" in elems.get("config", ""),
            }
    return verdicts


def parse_pacsguard(jsonl: Path) -> dict[str, dict[str, bool]]:
    verdicts: dict[str, dict[str, bool]] = {}
    with jsonl.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if not record["reachable"]:
                continue
            attempts = record["association"]["attempts"]
            verdicts[record["host"]] = {
                "dicom": record["dicom"],
                "any_ae": bool(attempts) and attempts[0]["outcome"] == "accepted",
            }
    return verdicts


def truth_verdicts(truth: dict[str, Any]) -> dict[str, dict[str, bool]]:
    return {
        h["address"]: {
            "dicom": h["expected_dicom"],
            "any_ae": bool(h["accepts_any_called_ae"]) and not h["calling_ae_checked"],
        }
        for h in truth["hosts"]
    }


def agreement(
    ours: dict[str, dict[str, bool]],
    nmap: dict[str, dict[str, bool]],
    truth: dict[str, dict[str, bool]],
    profiles: dict[str, str],
) -> dict[str, Any]:
    """Compare verdicts host by host; where they differ, the lab's ground truth arbitrates."""
    hosts = sorted(set(ours) | set(nmap))
    differing = [h for h in hosts if ours.get(h) != nmap.get(h)]
    well_formed = [h for h in hosts if not profiles.get(h, "").startswith("hostile")]
    return {
        "hosts_compared": len(hosts),
        "identical": len(hosts) - len(differing),
        "identical_on_well_formed_hosts": sum(ours.get(h) == nmap.get(h) for h in well_formed),
        "well_formed_hosts": len(well_formed),
        "differing": len(differing),
        "differing_where_pacsguard_matches_truth": sum(
            ours.get(h) == truth.get(h) for h in differing
        ),
        "differing_where_nmap_matches_truth": sum(nmap.get(h) == truth.get(h) for h in differing),
        "differing_profiles": sorted({profiles.get(h, "?") for h in differing}),
        "pacsguard_matches_truth": sum(ours.get(h) == truth.get(h) for h in truth),
        "nmap_matches_truth": sum(nmap.get(h) == truth.get(h) for h in truth),
        "truth_hosts": len(truth),
    }


def _median(runs: list[Measured]) -> Measured:
    """The run of median duration (the lower middle one for an even count)."""
    return sorted(runs, key=lambda m: m.seconds)[(len(runs) - 1) // 2]


def duration_by_profile(jsonl: Path, profiles: dict[str, str]) -> dict[str, float]:
    """Median probe time (`duration_s`) per lab profile, from one scan's records."""
    seen: dict[str, list[float]] = {}
    for record in _records(jsonl):
        if record["host"] in profiles:
            seen.setdefault(profiles[record["host"]], []).append(record["duration_s"])
    return {p: round(statistics.median(d), 4) for p, d in sorted(seen.items())}


def _records(jsonl: Path) -> list[dict[str, Any]]:
    with jsonl.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run(work: Path, hosts: int, seed: int, pairs: int = 7) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    require_free([LAB_BASE, "127.101.0.1"], PORT)
    lab, truth_path = start_lab(work, hosts, seed)
    try:
        truth = json.loads(truth_path.read_text())
        common = ["-p", str(PORT), "--concurrency", "512", "--connect-timeout", "2"]
        common += ["--read-timeout", "2", "--total-timeout", "20", "--fail-on", "critical"]
        nmap_argv = ["nmap", "-n", "-Pn", "-p", str(PORT), "--script", "+dicom-ping", "-oX", "-"]
        verify_argv = [_pacsguard(), "scan", LAB_NET, "--no-echo", "--no-count", *common]
        nmaps: list[Measured] = []
        verifies: list[Measured] = []
        for i in range(pairs):
            for tool in ("nmap", "verify") if i % 2 == 0 else ("verify", "nmap"):
                if tool == "nmap":
                    nmaps.append(measure([*nmap_argv, LAB_NET], work / f"nmap-{i}.xml"))
                else:
                    verifies.append(measure(verify_argv, work / f"pacsguard-verify-{i}.jsonl"))
        full = measure([_pacsguard(), "scan", LAB_NET, *common], work / "pacsguard-full.jsonl")
        wide = measure(
            [_pacsguard(), "scan", WIDE_NET, "--no-echo", "--no-count", *common],
            work / "pacsguard-wide.jsonl",
        )
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(10)
        except subprocess.TimeoutExpired:
            lab.kill()
    truth_v = truth_verdicts(truth)
    profiles = {h["address"]: h["profile"] for h in truth["hosts"]}
    ratios = [n.seconds / v.seconds for n, v in zip(nmaps, verifies, strict=True)]
    nmap, verify = _median(nmaps), _median(verifies)
    nmap_v = parse_nmap(nmap.stdout_path)
    verify_v = parse_pacsguard(verify.stdout_path)
    every_pair = [
        agreement(parse_pacsguard(v.stdout_path), parse_nmap(n.stdout_path), truth_v, profiles)
        for n, v in zip(nmaps, verifies, strict=True)
    ]
    full_v = parse_pacsguard(full.stdout_path)
    addresses = 4096

    def row(name: str, m: Measured, targets: int) -> dict[str, Any]:
        return {
            "tool": name,
            "targets": targets,
            "seconds": round(m.seconds, 3),
            "hosts_per_s": round(targets / m.seconds, 1),
            "peak_rss_mib": round(m.peak_rss_kib / 1024, 1),
            "exit_code": m.rc,
        }

    rows = [
        row("nmap --script +dicom-ping (median run)", nmap, addresses),
        row("pacsguard verification (median run)", verify, addresses),
        row("pacsguard echo+count", full, addresses),
        row("pacsguard verification (/16)", wide, 65536),
    ]
    return {
        "benchmark": "scan-vs-nmap",
        "lab": {"addresses": addresses, "live_hosts": len(truth["hosts"]), "port": PORT},
        "rows": rows,
        "pairs": [
            {
                "pair": i,
                "nmap_s": round(n.seconds, 3),
                "pacsguard_s": round(v.seconds, 3),
                "ratio": round(n.seconds / v.seconds, 2),
            }
            for i, (n, v) in enumerate(zip(nmaps, verifies, strict=True))
        ],
        "ratios": {
            "verification_speedup_vs_nmap": round(statistics.median(ratios), 2),
            "verification_speedup_min": round(min(ratios), 2),
            "verification_speedup_max": round(max(ratios), 2),
            "full_time_over_nmap_time": round(full.seconds / nmap.seconds, 2),
            "rss_16_over_rss_20": round(wide.peak_rss_kib / verify.peak_rss_kib, 2),
        },
        "verdicts": {
            "verification_vs_nmap": agreement(verify_v, nmap_v, truth_v, profiles),
            "full_vs_nmap": agreement(full_v, nmap_v, truth_v, profiles),
            "nmap_dicom_hosts": sum(v["dicom"] for v in nmap_v.values()),
            "pacsguard_dicom_hosts": sum(v["dicom"] for v in verify_v.values()),
            "pairs_identical_on_well_formed_hosts": sum(
                a["identical_on_well_formed_hosts"] == a["well_formed_hosts"] for a in every_pair
            ),
        },
        # Per-host probe cost by profile (verification, concurrency 512): the hostile silent and
        # closing hosts include the TLS attempt made where plaintext got no DICOM answer.
        "median_probe_s_by_profile": duration_by_profile(verify.stdout_path, profiles),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Scan benchmark: pacsguard vs nmap dicom-ping",
        "",
        f"Lab: {result['lab']['addresses']} loopback addresses, "
        f"{result['lab']['live_hosts']} live simulated PACS on port {result['lab']['port']}.",
        "",
        "| tool | targets | seconds | hosts/s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['tool']} | {r['targets']} | {r['seconds']} | {r['hosts_per_s']} | "
            f"{r['peak_rss_mib']} |"
        )
    ratios = result["ratios"]
    verdicts = result["verdicts"]
    v = verdicts["verification_vs_nmap"]
    lines += [
        "",
        f"- verification speed-up over nmap, median of {len(result['pairs'])} interleaved "
        f"pairs' ratios: **{ratios['verification_speedup_vs_nmap']}x**, range "
        f"{ratios['verification_speedup_min']}x to {ratios['verification_speedup_max']}x "
        "(target >= 2x)",
        f"- full echo+count time / nmap verification time: "
        f"**{ratios['full_time_over_nmap_time']}x** (target <= 3x)",
        f"- peak RSS at 65,536 targets / at 4,096 targets: {ratios['rss_16_over_rss_20']}x",
        f"- verdicts (speaks DICOM, accepts any AE) identical to nmap on "
        f"{v['identical_on_well_formed_hosts']} of {v['well_formed_hosts']} well-formed hosts; "
        f"{v['differing']} hosts differ, all of profiles {', '.join(v['differing_profiles'])}: "
        f"pacsguard matches the ground truth on {v['differing_where_pacsguard_matches_truth']} "
        f"of them, nmap on {v['differing_where_nmap_matches_truth']}",
        f"- against ground truth: pacsguard {v['pacsguard_matches_truth']} / "
        f"{v['truth_hosts']} hosts right, nmap {v['nmap_matches_truth']} / {v['truth_hosts']} "
        f"(DICOM hosts: nmap {verdicts['nmap_dicom_hosts']}, "
        f"pacsguard {verdicts['pacsguard_dicom_hosts']}); well-formed verdicts identical in "
        f"{verdicts['pairs_identical_on_well_formed_hosts']} of {len(result['pairs'])} pairs",
        "- median probe time per host by profile (s; hostile-silent and hostile-close-mid-pdu "
        "include the TLS attempt): "
        + ", ".join(f"{p} {d}" for p, d in result["median_probe_s_by_profile"].items()),
    ]
    machine = result["machine"]
    if "load_average_at_end" in machine:
        load = ", ".join(f"{x:.1f}" for x in machine["load_average_at_end"])
        lines.append(f"- load average at the end {load} on {machine['cpus']} CPUs")
    lines.append("")
    return "\n".join(lines)
