"""The end-to-end survey on the internet lab (`pacsguard lab serve --internet`), in one run.

Lab: a loopback /16 (65,536 addresses, 127.82.0.0/16 by default) on ports 104, 11112, 4242
and 2762; a few per cent listen (tarpits, HTTP/SSH/HTTPS, honeypots, broken listeners, ~0.5 %
real DICOM servers), the rest is closed. Measured, one after the other on one lab:
- survey, 1 process: `pacsguard scan` over the /16 x 4 ports (candidates by TCP connect,
  verification, C-ECHO, C-FIND counting) into the history store, then `pacsguard survey
  report` (store -> table) and `pacsguard report` (JSON Lines -> Markdown + CSV);
- survey, Dask: the same command with `--cluster local:2` (a `distributed.LocalCluster` of
  two worker processes, as a user runs it), into the same store;
- verification of candidates only: the scan given the listening host:port list (`-iL`), what a
  worker does after a SYN scanner (masscan, ZMap) found the open ports;
- nmap `--script +dicom-ping` on the same 4 ports of a fixed random sample of the /16's
  addresses (the whole /16 takes nmap about 100 minutes on this machine: it scans host groups
  one after the other, each waiting on its slowest script), and pacsguard's verdicts on the
  same sample;
- per process: peak RSS and CPU time of the coordinator (the Dask scheduler runs inside it for
  `local:N`), each worker process, nmap;
- verdicts per host against the ground truth: speaks DICOM yes/no (pacsguard: plain or inside
  TLS; nmap's dicom-ping: plaintext only), honeypots flagged, cluster members sharing a
  signature, the survey table's totals, every target exactly once in the Dask run.
From the measured CPU time per target: workers for a 24 h survey of IPv4 on the 4 ports.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._measure import Measured, ProcessPeak, measure, measure_processes
from benchmarks.scan_vs_nmap import parse_nmap

NETWORK = "127.82.0.0/16"
PORTS = (104, 11112, 4242, 2762)
PORT_TEXT = ",".join(map(str, PORTS))
CONCURRENCY = 1024
CONNECT_TIMEOUT = 2.0
#: The scanner's default. With 2 s, a loaded two-core machine (the lab's one event loop
#: serving 2,377 hosts next to the scanner) turned slow DICOM answers into false negatives.
READ_TIMEOUT = 5.0
#: Every IPv4 address (an upper bound: reserved ranges would take off about 14 %).
IPV4_ADDRESSES = 2**32
DAY_SECONDS = 86_400
DASK_WORKERS = 2
#: Addresses of the /16 nmap scans (all 4 ports each), drawn at random with the lab's seed.
NMAP_SAMPLE = 4096


def _pacsguard() -> str:
    return str(Path(sys.executable).with_name("pacsguard"))


def start_lab(work: Path, seed: int, network: str) -> tuple[subprocess.Popen[bytes], Path]:
    truth = work / "internet-truth.json"
    log = (work / "lab.log").open("wb")
    command = [_pacsguard(), "lab", "serve", "--internet", "--base", network]
    command += ["--internet-ports", PORT_TEXT, "--seed", str(seed), "--truth", str(truth)]
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"}
    )
    deadline = time.monotonic() + 300
    while not truth.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the internet lab failed to start; see {work / 'lab.log'}")
        time.sleep(0.2)
    return proc, truth


def peak_rss_kib(pid: int) -> int:
    """A live process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def scan_args(*, candidates: Path | None = None, concurrency: int = CONCURRENCY) -> list[str]:
    args = ["-p", PORT_TEXT, "--concurrency", str(concurrency)]
    args += ["--connect-timeout", str(CONNECT_TIMEOUT), "--read-timeout", str(READ_TIMEOUT)]
    args += ["--total-timeout", "20", "--allow-large-scope"]
    if candidates is not None:
        args += ["-iL", str(candidates)]
    return args


def read_pacsguard(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Reachable records by address (each lab listener has one port), and the record count."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if '"reachable":true' not in line:
                    continue
                record = json.loads(line)
                found[record["host"]] = {
                    "port": record["port"],
                    "dicom": record["dicom"],
                    "honeypot": record["honeypot"]["flagged"],
                    "signature": record.get("config_signature"),
                }
    return found


def truth_dicom(host: dict[str, Any]) -> bool:
    """Plaintext DICOM: what a scanner speaking DICOM on TCP should see."""
    return bool(host["expected_dicom"]) and host["tls"] is None


def verdicts(
    truth: dict[str, Any],
    ours: dict[str, dict[str, Any]],
    nmap: dict[str, dict[str, bool]] | None = None,
    sample: set[str] | None = None,
) -> dict[str, Any]:
    """Verdicts per listening host (of `sample` only, if given) against the ground truth."""
    hosts = [h for h in truth["hosts"] if sample is None or h["address"] in sample]
    listening = {h["address"] for h in hosts}
    wrong_ours: Counter[str] = Counter()
    wrong_nmap: Counter[str] = Counter()
    for host in hosts:
        # pacsguard speaks DICOM inside TLS too (tls-mutual excepted: no client certificate);
        # nmap's dicom-ping speaks plaintext only.
        if ours.get(host["address"], {}).get("dicom", False) != bool(host["expected_dicom"]):
            wrong_ours[host["profile"]] += 1
        if nmap is not None and nmap.get(host["address"], {}).get("dicom", False) != truth_dicom(
            host
        ):
            wrong_nmap[host["profile"]] += 1
    honeypots = {h["address"] for h in hosts if h["kind"] == "honeypot"}
    flagged = {a for a, r in ours.items() if r["honeypot"] and (sample is None or a in sample)}
    clusters_whole = 0
    for members in truth["clusters"].values():
        signatures = {ours.get(a, {}).get("signature") for a in members}
        clusters_whole += len(signatures) == 1 and None not in signatures
    reachable = {a for a in ours if sample is None or a in sample}
    out: dict[str, Any] = {
        "listening_hosts": len(hosts),
        "dicom_hosts_truth": sum(bool(h["expected_dicom"]) for h in hosts),
        "plaintext_dicom_hosts_truth": sum(truth_dicom(h) for h in hosts),
        "pacsguard_reachable": len(reachable),
        "pacsguard_reachable_not_listening": len(reachable - listening),
        "pacsguard_dicom_right": len(hosts) - sum(wrong_ours.values()),
        "pacsguard_wrong_by_profile": dict(wrong_ours),
        "honeypots_truth": len(honeypots),
        "honeypots_flagged_right": len(honeypots & flagged),
        "honeypots_flagged_wrong": len(flagged - honeypots),
        "clusters_truth": len(truth["clusters"]),
        "clusters_one_signature": clusters_whole,
    }
    if nmap is not None:
        open_hosts = {a for a in nmap if sample is None or a in sample}
        out |= {
            "nmap_open": len(open_hosts),
            "nmap_open_not_listening": len(open_hosts - listening),
            "nmap_dicom_right": len(hosts) - sum(wrong_nmap.values()),
            "nmap_wrong_by_profile": dict(wrong_nmap),
        }
    return out


def once_each(path: Path, targets: int) -> dict[str, int]:
    """Records in a JSON Lines output, distinct (host, port) among them, and targets expected."""
    seen: set[tuple[str, int]] = set()
    records = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            seen.add((record["host"], record["port"]))
            records += 1
    return {"records": records, "distinct_targets": len(seen), "targets": targets}


def worker_estimate(
    one: Measured,
    targets: int,
    verify: Measured,
    candidates: int,
    dask: list[ProcessPeak],
    nmap: Measured,
    nmap_targets: int,
) -> dict[str, Any]:
    """Workers for IPv4 x 4 ports in 24 h, from the measured CPU time per target (shown)."""
    internet_targets = IPV4_ADDRESSES * len(PORTS)
    cpu_per_target = one.cpu_seconds / targets
    cpu_workers = internet_targets * cpu_per_target / DAY_SECONDS
    # On the internet most SYNs get no answer: each holds a slot for the connect timeout.
    slot_rate = CONCURRENCY / CONNECT_TIMEOUT
    latency_workers = internet_targets / (slot_rate * DAY_SECONDS)
    cpu_per_candidate = verify.cpu_seconds / candidates
    worker_cpu = sum(p.cpu_seconds for p in dask if p.role.startswith("worker"))
    coordinator_cpu = sum(p.cpu_seconds for p in dask if not p.role.startswith("worker"))
    return {
        "internet_targets": internet_targets,
        "cpu_s_per_target": cpu_per_target,
        "cpu_bound_workers": math.ceil(cpu_workers),
        "slot_rate_per_worker": slot_rate,
        "latency_bound_workers": math.ceil(latency_workers),
        "workers_needed": math.ceil(max(cpu_workers, latency_workers)),
        "dask_worker_cpu_s_per_target": worker_cpu / targets,
        "dask_cpu_bound_workers": math.ceil(internet_targets * worker_cpu / targets / DAY_SECONDS),
        "dask_coordinator_cpu_s_per_target": coordinator_cpu / targets,
        "dask_coordinator_cores": internet_targets * coordinator_cpu / targets / DAY_SECONDS,
        "cpu_s_per_candidate": cpu_per_candidate,
        "candidates_per_worker_day": math.floor(DAY_SECONDS / cpu_per_candidate),
        "nmap_targets_per_s": nmap_targets / nmap.seconds,
        "nmap_processes": math.ceil(internet_targets / (nmap_targets / nmap.seconds) / DAY_SECONDS),
    }


def row(
    name: str,
    m: Measured,
    targets: int,
    addresses: int,
    processes: list[ProcessPeak] | None = None,
) -> dict[str, Any]:
    return {
        "stage": name,
        "targets": targets,
        "addresses": addresses,
        "seconds": round(m.seconds, 2),
        "targets_per_s": round(targets / m.seconds, 1),
        "addresses_per_s": round(addresses / m.seconds, 1),
        "cpu_seconds": round(m.cpu_seconds, 2),
        "peak_rss_mib_largest_process": round(m.peak_rss_kib / 1024, 1),
        "processes": [
            {
                "role": p.role,
                "peak_rss_mib": round(p.peak_rss_kib / 1024, 1),
                "cpu_seconds": round(p.cpu_seconds, 2),
            }
            for p in processes or []
            if p.peak_rss_kib
        ],
        "exit_code": m.rc,
    }


def process_role(cmdline: list[str]) -> str:
    """Name a process of a measured command by its command line."""
    text = " ".join(cmdline)
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    if "spawn_main" in text or "forkserver" in text:
        return "worker"
    if cmdline and Path(cmdline[0]).name == "nmap":
        return "nmap"
    if "pacsguard" in text:
        return "coordinator" if "--cluster" in cmdline else "scan"
    return Path(cmdline[0]).name if cmdline else "?"


def survey_totals(csv_path: Path) -> dict[str, str]:
    """The total row of `pacsguard survey report --csv` (counts only, no patient value)."""
    with csv_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    totals = [r for r in rows if "total" in " ".join(str(v).lower() for v in r.values())]
    return dict(totals[-1] if totals else rows[-1]) if rows else {}


def _measured(m: Measured, processes: list[ProcessPeak]) -> Measured:
    """With the CPU time summed over the sampled processes (a LocalCluster's worker processes
    are not waited for by their parent, so the launcher's RUSAGE_CHILDREN may miss them)."""
    cpu = sum(p.cpu_seconds for p in processes)
    return Measured(m.argv, m.rc, m.seconds, m.peak_rss_kib, m.stdout_path, max(cpu, m.cpu_seconds))


def run(
    work: Path,
    seed: int,
    *,
    network: str = NETWORK,
    nmap_sample: int = NMAP_SAMPLE,
) -> dict[str, Any]:
    """One survey of the internet lab over `network`: 1 process, Dask local:2, nmap on a
    random sample of `nmap_sample` addresses (0: the whole network)."""
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{work / 'history.sqlite'}"
    load_before = os.getloadavg()
    lab, truth_path = start_lab(work, seed, network)
    try:
        truth = json.loads(truth_path.read_text())
        candidates = work / "candidates.txt"
        candidates.write_text("".join(f"{h['address']}:{h['port']}\n" for h in truth["hosts"]))
        all_addresses = [str(a) for a in ipaddress.IPv4Network(network)]
        sample = (
            sorted(random.Random(seed).sample(all_addresses, nmap_sample), key=_address_key)
            if 0 < nmap_sample < len(all_addresses)
            else all_addresses
        )
        sample_file = work / "nmap-sample.txt"
        sample_file.write_text("".join(f"{a}\n" for a in sample))
        # Both surveys write the same: JSON Lines to -o and to standard output, and the store.
        one_out = work / "survey-1.jsonl"
        one, one_procs = measure_processes(
            [_pacsguard(), "scan", network, *scan_args(), "--store", store, "-o", str(one_out)],
            work / "survey-1.out",
            process_role,
        )
        one = _measured(one, one_procs)
        # A fresh store: the 1-process scan is run 1.
        survey_report = measure(
            [
                *(_pacsguard(), "survey", "report", "1", "--store", store),
                *("--md", str(work / "survey-table.md"), "--csv", str(work / "survey-table.csv")),
            ],
            work / "survey-report.out",
        )
        report = measure(
            [
                *(_pacsguard(), "report", str(one_out)),
                *("--md", str(work / "survey.md"), "--csv", str(work / "survey.csv")),
            ],
            work / "report.out",
        )
        dask_out = work / "survey-dask.jsonl"
        dask, dask_procs = measure_processes(
            [
                *(_pacsguard(), "scan", network, "--store", store),
                # --concurrency is per worker: the two share out the 1-process survey's slots,
                # so the lab (one process) sees as many connections in flight in both runs.
                *scan_args(concurrency=CONCURRENCY // DASK_WORKERS),
                *("--cluster", f"local:{DASK_WORKERS}", "--state-dir", str(work / "runs")),
                *("-o", str(dask_out)),
            ],
            work / "survey-dask.out",
            process_role,
        )
        dask = _measured(dask, dask_procs)
        verify = measure(
            [_pacsguard(), "scan", *scan_args(candidates=candidates)], work / "verify.jsonl"
        )
        nmap_run, nmap_procs = measure_processes(
            [
                *("nmap", "-n", "-Pn", "-p", PORT_TEXT, "--script", "+dicom-ping"),
                *("-iL", str(sample_file), "-oX", "-"),
            ],
            work / "nmap.xml",
            process_role,
        )
        lab_rss = peak_rss_kib(lab.pid)
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
    addresses = truth["addresses"]
    targets = addresses * len(PORTS)
    listening = truth["listening"]
    ours = read_pacsguard([one_out])
    ours_dask = read_pacsguard([dask_out])
    nmap_v = parse_nmap(nmap_run.stdout_path)
    in_sample = set(sample)
    sample_targets = len(sample) * len(PORTS)
    rows = [
        row("survey, 1 process: scan into the store", one, targets, addresses, one_procs),
        row(
            "survey, Dask `--cluster local:2`: scan into the store",
            dask,
            targets,
            addresses,
            dask_procs,
        ),
        row("survey report (store -> table, Markdown + CSV)", survey_report, listening, listening),
        row("report (JSON Lines -> Markdown + CSV)", report, listening, listening),
        row("verification+count of candidates only (-iL)", verify, listening, listening),
        row(
            f"nmap --script +dicom-ping, {len(sample)} sampled addresses x 4 ports",
            nmap_run,
            sample_targets,
            len(sample),
            nmap_procs,
        ),
    ]
    return {
        "benchmark": "survey-internet",
        "seed": seed,
        "lab": {
            "network": network,
            "ports": list(PORTS),
            "addresses": addresses,
            "targets": targets,
            "listening": listening,
            "kinds": truth["kinds"],
            "clusters": len(truth["clusters"]),
            "honeypots": truth["kinds"].get("honeypot", 0),
            "clustered_hosts": sum(len(m) for m in truth["clusters"].values()),
            "lab_peak_rss_mib": round(lab_rss / 1024, 1),
        },
        "nmap_sample": {
            "addresses": len(sample),
            "of": len(all_addresses),
            "seed": seed,
            "listening_in_sample": sum(1 for h in truth["hosts"] if h["address"] in in_sample),
        },
        "rows": rows,
        "records": {
            "one_process": once_each(one_out, targets),
            "dask_local_2": once_each(dask_out, targets),
        },
        "survey_table_total": survey_totals(work / "survey-table.csv"),
        "missing_stages": [
            "GeoIP enrichment of records: not measured (the lab's MMDB files are written, unused)"
        ],
        "verdicts": verdicts(truth, ours),
        "verdicts_dask": verdicts(truth, ours_dask),
        "verdicts_sample": verdicts(truth, ours, nmap_v, in_sample),
        "estimate_24h": worker_estimate(
            one, targets, verify, listening, dask_procs, nmap_run, sample_targets
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def _address_key(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def _processes(r: dict[str, Any]) -> str:
    return (
        "; ".join(
            f"{p['role']} {p['peak_rss_mib']} MiB, {p['cpu_seconds']} s CPU" for p in r["processes"]
        )
        or f"{r['peak_rss_mib_largest_process']} MiB (largest)"
    )


def _right(v: dict[str, Any], who: str) -> str:
    wrong = v[f"{who}_wrong_by_profile"]
    return f"{v[f'{who}_dicom_right']} / {v['listening_hosts']} right" + (
        f" (wrong: {', '.join(f'{k} {n}' for k, n in sorted(wrong.items()))})" if wrong else ""
    )


def markdown(result: dict[str, Any]) -> str:
    lab = result["lab"]
    machine = result["machine"]
    sample = result["nmap_sample"]
    lines = [
        "# Survey benchmark: the internet lab",
        "",
        f"Lab: {lab['network']} ({lab['addresses']} addresses) x ports "
        f"{', '.join(map(str, lab['ports']))} = {lab['targets']} targets; {lab['listening']} "
        f"listening ({', '.join(f'{k} {v}' for k, v in lab['kinds'].items())}; "
        f"{lab['clusters']} identical-configuration clusters), the rest closed; seed "
        f"{result['seed']}. Lab process peak RSS {lab['lab_peak_rss_mib']} MiB. All stages in one "
        f"run, one after the other, on one lab. Machine: {machine['cpus']} CPUs shared with other "
        f"developers running tests; load average (1, 5, 15 min) "
        f"{', '.join(map(str, machine['load_average_before']))} before, "
        f"{', '.join(map(str, machine['load_average_after']))} after: wall times are inflated "
        "and vary between runs, CPU times much less.",
        "",
        "| stage | targets | addresses | seconds | targets/s | addresses/s | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['stage']} | {r['targets']} | {r['addresses']} | {r['seconds']} | "
            f"{r['targets_per_s']} | {r['addresses_per_s']} | {r['cpu_seconds']} |"
        )
    lines += ["", "Peak RSS and CPU time per process (sampled every 0.2 s from /proc):", ""]
    for r in result["rows"]:
        lines.append(f"- {r['stage']}: {_processes(r)}")
    v, vd, vs = result["verdicts"], result["verdicts_dask"], result["verdicts_sample"]
    rec = result["records"]
    e = result["estimate_24h"]
    t = result["survey_table_total"]
    lines += [
        "",
        f"Both surveys: `--concurrency` {CONCURRENCY} in all (`--cluster local:2`: "
        f"{CONCURRENCY // DASK_WORKERS} per worker, its unit), connect timeout "
        f"{CONNECT_TIMEOUT:g} s, read timeout {READ_TIMEOUT:g} s. In `--cluster local:2` the Dask "
        "scheduler runs inside the coordinator process (`distributed.LocalCluster`), which "
        "also writes every record (JSON Lines file, standard output, store); the 1-process "
        "survey writes the same three. CPU times include start-up (imports, the cluster).",
        "",
        "## Verdicts against the ground truth",
        "",
        f"Speaks DICOM yes/no per listening host ({v['dicom_hosts_truth']} DICOM hosts in "
        f"truth, {v['plaintext_dicom_hosts_truth']} of them plaintext):",
        "",
        f"- pacsguard, 1 process (plain or inside TLS): {_right(v, 'pacsguard')}; closed "
        f"addresses reported reachable: {v['pacsguard_reachable_not_listening']}",
        f"- pacsguard, Dask local:2: {_right(vd, 'pacsguard')}; closed addresses reported "
        f"reachable: {vd['pacsguard_reachable_not_listening']}; records "
        f"{rec['dask_local_2']['records']} for {rec['dask_local_2']['distinct_targets']} "
        f"distinct targets, every target of the scope once ({rec['dask_local_2']['targets']} "
        f"less the /16's network and broadcast addresses x {len(lab['ports'])} ports, which a "
        f"scope leaves out; 1 process: {rec['one_process']['records']} / "
        f"{rec['one_process']['distinct_targets']})",
        f"- on nmap's sample ({sample['addresses']} of {sample['of']} addresses drawn at random "
        f"with seed {sample['seed']}, all 4 ports; {sample['listening_in_sample']} listening "
        f"hosts, {vs['dicom_hosts_truth']} DICOM, {vs['plaintext_dicom_hosts_truth']} "
        f"plaintext): nmap (plaintext only) {_right(vs, 'nmap')}, open ports on closed "
        f"addresses {vs['nmap_open_not_listening']}; pacsguard {_right(vs, 'pacsguard')}",
        f"- honeypots flagged: {v['honeypots_flagged_right']} of {v['honeypots_truth']} "
        f"({v['honeypots_flagged_wrong']} other hosts flagged); Dask run: "
        f"{vd['honeypots_flagged_right']} ({vd['honeypots_flagged_wrong']})",
        f"- identical-configuration clusters whose members share one config signature: "
        f"{v['clusters_one_signature']} of {v['clusters_truth']}; Dask run: "
        f"{vd['clusters_one_signature']}",
        f"- survey table (`survey report`, total row) against the truth: speak_dicom "
        f"{t.get('speak_dicom')} (truth: {v['dicom_hosts_truth']}), honeypots "
        f"{t.get('honeypots')} (truth: {lab['honeypots']}), clustered_hosts "
        f"{t.get('clustered_hosts')} (truth: {lab['clustered_hosts']} in {lab['clusters']} "
        "clusters)",
        "",
        "## Workers for IPv4 x 4 ports in 24 h",
        "",
        f"- targets: 2^32 addresses x {len(lab['ports'])} ports = {e['internet_targets']:,}",
        f"- CPU-bound, from the 1-process survey: {e['cpu_s_per_target'] * 1e6:.1f} us CPU per "
        f"target -> {e['internet_targets']:,} x {e['cpu_s_per_target']:.3e} s / 86,400 s = "
        f"**{e['cpu_bound_workers']} workers** (one core each)",
        f"- CPU-bound, from the Dask run's worker processes: "
        f"{e['dask_worker_cpu_s_per_target'] * 1e6:.1f} us per target -> "
        f"**{e['dask_cpu_bound_workers']} workers**; its coordinator spent "
        f"{e['dask_coordinator_cpu_s_per_target'] * 1e6:.1f} us per target (scheduler, "
        f"writing every record): {e['dask_coordinator_cores']:.1f} cores for the whole survey "
        "in 24 h, more than one coordinator process has"
        if e["dask_coordinator_cores"] > 1
        else f"- CPU-bound, from the Dask run's worker processes: "
        f"{e['dask_worker_cpu_s_per_target'] * 1e6:.1f} us per target -> "
        f"**{e['dask_cpu_bound_workers']} workers**; its coordinator spent "
        f"{e['dask_coordinator_cpu_s_per_target'] * 1e6:.1f} us per target: "
        f"{e['dask_coordinator_cores']:.2f} of a core for the whole survey in 24 h",
        f"- latency-bound: on the internet most SYNs go unanswered and hold a slot for the "
        f"connect timeout: {CONCURRENCY} slots / {CONNECT_TIMEOUT} s = "
        f"{e['slot_rate_per_worker']:.0f} targets/s per worker -> {e['internet_targets']:,} / "
        f"({e['slot_rate_per_worker']:.0f} x 86,400) = **{e['latency_bound_workers']} workers** "
        "at this concurrency",
        f"- needed: the larger, **{e['workers_needed']} workers** (fewer with more concurrency "
        "per worker, if descriptors allow)",
        f"- with SYN discovery done by masscan/ZMap, a worker verifies and counts "
        f"{e['candidates_per_worker_day']:,} open candidates a day "
        f"({e['cpu_s_per_candidate'] * 1e3:.2f} ms CPU each, tarpits included)",
        f"- nmap --script +dicom-ping at its measured {e['nmap_targets_per_s']:.0f} targets/s "
        f"(latency-bound: it used {result['rows'][-1]['cpu_seconds']} s CPU) would need "
        f"{e['nmap_processes']:,} processes",
        "",
        "Missing stages: " + "; ".join(result["missing_stages"]) + ".",
        "",
    ]
    return "\n".join(lines)
