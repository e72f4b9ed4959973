"""pacsguard's verification against nmap's dicom-ping on a lab without hostile responders.

Lab: a /20 of loopback addresses (4,096) with 60 live pynetdicom Verification SCPs at its start
(`benchmarks.pynetdicom_lab`, a third checking the called AE) and nothing else listening, so no
tool waits for a time-out: what is measured is each tool's own cost. Both run as a user would,
as subprocesses on the same addresses, in interleaved pairs (the first tool alternates); the
speed-up is the median of the per-pair ratios nmap seconds / pacsguard seconds, with its range.
Verdicts ("speaks DICOM", "accepts any called AE") are compared host by host.

pacsguard runs twice in each round: as it comes (after ANY-SCP is refused, it also tries the
curated vendor-default called AE titles: nine more associations on each checking host, which
nmap does not send) and with `--no-vendor-aets` (only ANY-SCP, the same requests as nmap).
The three runs of a round go in a rotating order.

Both tools run as a new user's shell would run them: this machine's agent sessions export
PYTHONDONTWRITEBYTECODE=1 and PYTHONUNBUFFERED=1, which no user sets, so they are left out of
the tools' environment, and pacsguard's package is byte-compiled first, as `pip install` does
(an editable checkout would otherwise compile every module on every start). Start-up is
`pacsguard --help` and a scan of one closed port, wall and CPU time.

Besides, on the same machine and in the same run:
- pacsguard start-up: a scan of one address where nothing listens;
- per-host probe cost (the records' `duration_s`, concurrency 1) of plain DIMSE hosts, of
  DIMSE-TLS hosts (lab `open-tls`), of hosts that close without a DICOM answer (lab
  `hostile-close-mid-pdu`, which also get a TLS attempt) and of an Orthanc web port (HTTP
  tier) next to that Orthanc's DICOM port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._measure import Measured, measure, wait_port
from benchmarks.scan_vs_nmap import agreement, parse_nmap, parse_pacsguard, require_free

PORT = 11112
NET = "127.96.0.0/20"
BASE = "127.96.0.1"
ADDRESSES = 4096
NOTHING = "127.97.0.1"  # nothing listens there: start-up alone
VERIFY = ["--no-echo", "--no-count", "--fail-on", "critical"]
#: Set by this machine's agent sessions, not by users (see the module docstring).
SESSION_ONLY_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")
TOOLS = ("nmap", "pacsguard", "pacsguard-plain")


def _pacsguard() -> str:
    return str(Path(sys.executable).with_name("pacsguard"))


@contextmanager
def _process(argv: list[str], log: Path, ready: Path | None, wait: tuple[str, int] | None,
             env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Run a server until the block ends; ready once `ready` exists and `wait` accepts."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1",
                                                             **(env or {})}
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while ready is not None and not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} failed to start; see {log}")
                time.sleep(0.2)
            if wait is not None:
                wait_port(*wait, 60)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def pynetdicom_lab(work: Path, hosts: int) -> Any:
    truth = work / "pynetdicom-truth.json"
    argv = [sys.executable, "-m", "benchmarks.pynetdicom_lab", "--hosts", str(hosts)]
    argv += ["--base-address", BASE, "--port", str(PORT), "--truth", str(truth)]
    return _process(argv, work / "pynetdicom-lab.log", truth, (BASE, PORT))


def pacsguard_lab(work: Path, profile: str, base: str, hosts: int) -> Any:
    truth = work / f"lab-{profile}.json"
    argv = [_pacsguard(), "lab", "serve", "--hosts", str(hosts), "--port", str(PORT)]
    argv += ["--base-address", base, "--profile", profile, "--truth", str(truth)]
    return _process(argv, work / f"lab-{profile}.log", truth, (base, PORT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def orthanc(work: Path) -> tuple[Any, int, int]:
    """An empty Orthanc (REST without authentication, loopback clients only)."""
    folder = work / "orthanc"
    folder.mkdir(exist_ok=True)
    dicom_port, http_port = _free_port(), _free_port()
    config = {
        "Name": "pacsguard-bench",
        "StorageDirectory": str(folder),
        "IndexDirectory": str(folder),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    argv = ["Orthanc", "--no-jobs", str(path)]
    ctx = _process(argv, folder / "orthanc.log", None, ("127.0.0.1", http_port))
    return ctx, dicom_port, http_port


def _records(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def per_host_cost(
    work: Path, name: str, warm_up: str, targets: list[str], ports: str, runs: int
) -> dict[str, Any]:
    """Median per-host probe time (`duration_s`, concurrency 1) over `runs` scans of `targets`.

    Each scan starts with `warm_up` (a target of the same tier, its record dropped): the first
    target that answers loads that tier's libraries, once per scan, not once per host.
    """
    durations: list[float] = []
    last: list[dict[str, Any]] = []
    for i in range(runs):
        out = work / f"cost-{name}-{i}.jsonl"
        argv = [_pacsguard(), "scan", warm_up, *targets, "-p", ports, "--concurrency", "1"]
        measure([*argv, *VERIFY], out)
        last = _records(out)[1:]  # concurrency 1: records come in target order
        durations += [r["duration_s"] for r in last]
    return {
        "probe": name,
        "hosts": len(targets),
        "median_s_per_host": round(statistics.median(durations), 4),
        "min_s": round(min(durations), 4),
        "max_s": round(max(durations), 4),
        "tls": sum(bool(r["tls"]) for r in last),
        "dicom": sum(bool(r["dicom"]) for r in last),
        "http": sum(r["http"] is not None for r in last),
    }


def _user_measure(argv: list[str], out: Path) -> Measured:
    return measure(argv, out, drop_env=SESSION_ONLY_ENV)


def byte_compile_pacsguard() -> None:
    """Write pacsguard's bytecode, as installing it with pip does."""
    import pacsguard

    package = Path(pacsguard.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def run(work: Path, *, pairs: int = 7, hosts: int = 60, cost_runs: int = 5) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    require_free([BASE, NOTHING, "127.98.0.1", "127.98.1.1", "127.98.2.1"], PORT)
    byte_compile_pacsguard()
    argv = {
        "pacsguard": [_pacsguard(), "scan", NET, "-p", str(PORT), *VERIFY],
        "pacsguard-plain": [_pacsguard(), "scan", NET, "-p", str(PORT), *VERIFY,
                            "--no-vendor-aets"],
        "nmap": ["nmap", "-n", "-Pn", "--script", "+dicom-ping", "-p", str(PORT), "-oX", "-", NET],
    }  # fmt: skip
    out_name = {"nmap": "nmap-{}.xml", "pacsguard": "pacsguard-{}.jsonl",
                "pacsguard-plain": "pacsguard-plain-{}.jsonl"}  # fmt: skip
    pair_rows: list[dict[str, Any]] = []
    startup: list[Measured] = []
    helps: list[Measured] = []
    with pynetdicom_lab(work, hosts):
        truth = json.loads((work / "pynetdicom-truth.json").read_text())
        for i in range(pairs):
            order = TOOLS[i % 3 :] + TOOLS[: i % 3]
            got = {tool: _user_measure(argv[tool], work / out_name[tool].format(i))
                   for tool in order}  # fmt: skip
            startup.append(
                _user_measure([_pacsguard(), "scan", NOTHING, "-p", str(PORT), *VERIFY],
                              work / "startup.jsonl")
            )  # fmt: skip
            helps.append(_user_measure([_pacsguard(), "--help"], work / "help.txt"))
            nmap_s = got["nmap"].seconds
            pair_rows.append(
                {
                    "pair": i,
                    "order": list(order),
                    "nmap_s": round(nmap_s, 3),
                    "pacsguard_s": round(got["pacsguard"].seconds, 3),
                    "pacsguard_plain_s": round(got["pacsguard-plain"].seconds, 3),
                    "ratio": round(nmap_s / got["pacsguard"].seconds, 3),
                    "ratio_plain": round(nmap_s / got["pacsguard-plain"].seconds, 3),
                    "nmap_cpu_s": round(got["nmap"].cpu_seconds, 3),
                    "pacsguard_cpu_s": round(got["pacsguard"].cpu_seconds, 3),
                    "pacsguard_plain_cpu_s": round(got["pacsguard-plain"].cpu_seconds, 3),
                    "nmap_rss_mib": round(got["nmap"].peak_rss_kib / 1024, 1),
                    "pacsguard_rss_mib": round(got["pacsguard"].peak_rss_kib / 1024, 1),
                    "load_average": os.getloadavg()[0],
                }
            )
        # Where pacsguard's time goes on the checking hosts: its records' own durations.
        records = _records(work / f"pacsguard-{pairs - 1}.jsonl")
    truth_v = {
        h["address"]: {"dicom": h["expected_dicom"], "any_ae": h["accepts_any_called_ae"]}
        for h in truth["hosts"]
    }
    profiles = {h["address"]: h["profile"] for h in truth["hosts"]}
    verdicts = {
        tool: [
            agreement(
                parse_pacsguard(work / out_name[tool].format(i)),
                parse_nmap(work / f"nmap-{i}.xml"),
                truth_v,
                profiles,
            )
            for i in range(pairs)
        ]
        for tool in ("pacsguard", "pacsguard-plain")
    }
    live = [r for r in records if r["reachable"]]
    checking = [
        r["duration_s"] for r in live if r["association"]["any_called_ae_accepted"] is False
    ]
    open_ = [r["duration_s"] for r in live if r["association"]["any_called_ae_accepted"]]
    attempts = [len(r["association"]["attempts"]) for r in live]

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }

    costs = []
    kinds = (
        ("plain DIMSE (lab open)", "open", "127.98.0"),
        ("DIMSE-TLS (lab open-tls)", "open-tls", "127.98.1"),
        ("closes without a DICOM answer, then a TLS attempt (lab hostile-close-mid-pdu)",
         "hostile-close-mid-pdu", "127.98.2"),
    )  # fmt: skip
    ctx, dicom_port, http_port = orthanc(work)
    with contextlib.ExitStack() as stack:
        for _, profile, base in kinds:
            stack.enter_context(pacsguard_lab(work, profile, f"{base}.1", 5))
        stack.enter_context(ctx)
        for name, profile, base in kinds:
            lab_hosts = [f"{base}.{n}" for n in range(1, 6)]
            costs.append(
                per_host_cost(work, profile, lab_hosts[0], lab_hosts[1:], str(PORT), cost_runs)
            )
            costs[-1]["probe"] = name
        orthanc_dicom = f"127.0.0.1:{dicom_port}"
        costs.append(
            per_host_cost(
                work, "orthanc-dicom", "127.98.0.1", [orthanc_dicom], str(PORT), cost_runs
            )
        )
        costs[-1]["probe"] = "Orthanc DICOM port (plain DIMSE)"
        web = [f"http://127.0.0.2:{http_port}", f"http://127.0.0.1:{http_port}"]
        costs.append(per_host_cost(work, "orthanc-http", web[0], web[1:], "80", cost_runs))
        costs[-1]["probe"] = "Orthanc web port (HTTP tier: Orthanc REST, QIDO-RS, viewers)"

    return {
        "benchmark": "scan-vs-nmap-clean-lab",
        "lab": {
            "addresses": ADDRESSES,
            "live_hosts": len(truth["hosts"]),
            "checking_called_ae": sum(not h["accepts_any_called_ae"] for h in truth["hosts"]),
            "servers": "pynetdicom AEs (Verification SCP), one process",
            "port": PORT,
        },
        "environment": {"dropped": list(SESSION_ONLY_ENV), "byte_compiled": True},
        "pairs": pair_rows,
        "speedup": {
            **spread([p["ratio"] for p in pair_rows]),
            "nmap_median_s": round(statistics.median(p["nmap_s"] for p in pair_rows), 3),
            "pacsguard_median_s": round(statistics.median(p["pacsguard_s"] for p in pair_rows), 3),
        },
        "speedup_plain": {
            **spread([p["ratio_plain"] for p in pair_rows]),
            "pacsguard_plain_median_s": round(
                statistics.median(p["pacsguard_plain_s"] for p in pair_rows), 3
            ),
        },
        "cpu_median_s": {
            "nmap": round(statistics.median(p["nmap_cpu_s"] for p in pair_rows), 3),
            "pacsguard": round(statistics.median(p["pacsguard_cpu_s"] for p in pair_rows), 3),
            "pacsguard_plain": round(
                statistics.median(p["pacsguard_plain_cpu_s"] for p in pair_rows), 3
            ),
        },
        "pacsguard_breakdown": {
            "startup_median_s": round(statistics.median(m.seconds for m in startup), 3),
            "startup_range_s": [
                round(min(m.seconds for m in startup), 3),
                round(max(m.seconds for m in startup), 3),
            ],
            "startup_cpu_median_s": round(statistics.median(m.cpu_seconds for m in startup), 3),
            "help_median_s": round(statistics.median(m.seconds for m in helps), 3),
            "help_range_s": [
                round(min(m.seconds for m in helps), 3),
                round(max(m.seconds for m in helps), 3),
            ],
            "help_cpu_median_s": round(statistics.median(m.cpu_seconds for m in helps), 3),
            "open_host_median_s": round(statistics.median(open_), 3) if open_ else None,
            "checking_host_median_s": round(statistics.median(checking), 3) if checking else None,
            "attempts_on_checking_hosts": max(attempts, default=0),
            "attempts_on_open_hosts": min(attempts, default=0),
        },
        "verdicts": {
            tool: {
                "pairs_identical_on_all_hosts": sum(v["differing"] == 0 for v in runs),
                "pairs": len(runs),
                "hosts_compared": runs[-1]["hosts_compared"],
                "pacsguard_matches_truth": min(v["pacsguard_matches_truth"] for v in runs),
                "nmap_matches_truth": min(v["nmap_matches_truth"] for v in runs),
                "truth_hosts": runs[-1]["truth_hosts"],
            }
            for tool, runs in verdicts.items()
        },
        "per_host_cost": costs,
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
    }


def markdown(result: dict[str, Any]) -> str:
    lab, s, sp, b = (
        result["lab"],
        result["speedup"],
        result["speedup_plain"],
        result["pacsguard_breakdown"],
    )
    cpu = result["cpu_median_s"]
    lines = [
        "# Scan benchmark on a lab without hostile responders: pacsguard vs nmap dicom-ping",
        "",
        f"Lab: {lab['addresses']} loopback addresses, {lab['live_hosts']} live {lab['servers']} "
        f"on port {lab['port']}, {lab['checking_called_ae']} of them checking the called AE; "
        "nothing else listens (no tool waits for a time-out). The tools run as subprocesses "
        "on the same addresses, in rounds of three in rotating order: nmap, pacsguard as it "
        "comes (ANY-SCP, then on a checking host the nine curated vendor titles at once), and "
        "pacsguard `--no-vendor-aets` (ANY-SCP only, as nmap). Environment as a user's: "
        f"{', '.join(result['environment']['dropped'])} (set by this machine's agent sessions) "
        "left out, pacsguard byte-compiled as pip installs it.",
        "",
        "| round | order | load | nmap s | pacsguard s | ratio | --no-vendor-aets s | ratio "
        "| CPU s nmap / pacsguard / plain |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["pairs"]:
        lines.append(
            f"| {p['pair']} | {', '.join(p['order'])} | {p['load_average']:.1f} | {p['nmap_s']} "
            f"| {p['pacsguard_s']} | {p['ratio']} | {p['pacsguard_plain_s']} | "
            f"{p['ratio_plain']} | {p['nmap_cpu_s']} / {p['pacsguard_cpu_s']} / "
            f"{p['pacsguard_plain_cpu_s']} |"
        )
    load = ", ".join(f"{x:.1f}" for x in result["machine"]["load_average_at_end"])
    lines += [
        "",
        f"- pacsguard verification speed-up over nmap (median of per-round ratios nmap s / "
        f"pacsguard s): **{s['median']}x**, range {s['min']}x to {s['max']}x (target >= 1.0x); "
        f"medians nmap {s['nmap_median_s']} s, pacsguard {s['pacsguard_median_s']} s",
        f"- with `--no-vendor-aets` (the same requests as nmap): **{sp['median']}x**, range "
        f"{sp['min']}x to {sp['max']}x; median {sp['pacsguard_plain_median_s']} s",
        f"- CPU time (median): nmap {cpu['nmap']} s, pacsguard {cpu['pacsguard']} s, "
        f"`--no-vendor-aets` {cpu['pacsguard_plain']} s",
        f"- load average at the end {load} on {result['machine']['cpus']} CPUs (per round "
        "above: the 1-minute load when the round ended)",
        f"- pacsguard start-up: `pacsguard --help` {b['help_median_s']} s wall (range "
        f"{b['help_range_s'][0]} to {b['help_range_s'][1]}), {b['help_cpu_median_s']} s CPU; "
        f"a scan of one closed port {b['startup_median_s']} s wall (range "
        f"{b['startup_range_s'][0]} to {b['startup_range_s'][1]}), "
        f"{b['startup_cpu_median_s']} s CPU (target < 0.3 s)",
        f"- pacsguard's probes: an open host's {b['open_host_median_s']} s, a checking host's "
        f"{b['checking_host_median_s']} s ({b['attempts_on_checking_hosts']} associations: "
        "ANY-SCP, then the curated vendor titles together; nmap sends one)",
    ]
    for tool, v in result["verdicts"].items():
        lines.append(
            f"- verdicts of {tool} (speaks DICOM, accepts any AE) identical to nmap's on all "
            f"{v['hosts_compared']} live hosts in {v['pairs_identical_on_all_hosts']} of "
            f"{v['pairs']} rounds; against ground truth: pacsguard {v['pacsguard_matches_truth']}"
            f" / {v['truth_hosts']}, nmap {v['nmap_matches_truth']} / {v['truth_hosts']} "
            "(worst round)"
        )
    lines += [
        "",
        "## Per-host probe cost by kind (pacsguard verification, concurrency 1)",
        "",
        "| probe | hosts | median s per host | min | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in result["per_host_cost"]:
        lines.append(
            f"| {c['probe']} | {c['hosts']} | {c['median_s_per_host']} | {c['min_s']} | "
            f"{c['max_s']} |"
        )
    lines.append("")
    return "\n".join(lines)
