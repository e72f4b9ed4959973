"""`python -m benchmarks load`: sustained load on one archive (issue 9, deliverable 8).

`pacsguard serve` runs as its own process on a data folder made the way a new user makes one:
`pacsguard init` (the default config: TLS listener only, fsync'd audit log, encryption at rest),
then `pacsguard user add` (two users, roles "modality" and "viewer", passwords from stdin) and
`pacsguard ae add` (MODALITY: user-password, store; VIEWER: user-password, find). Only the port
is set on the command line. Then 6 storing and 4 querying pynetdicom clients (`load_clients`,
one process each, each from its own loopback source address, PS3.7 username + passcode over
TLS) run for `duration_s`, each opening a new association after every `per_association`
operations. Afterwards:

- every acknowledged instance is looked for by an IMAGE-level C-FIND per stored series (over
  TLS as VIEWER, SOP Instance UIDs compared), and counted by `pacsguard fsck` once the server
  has stopped;
- `pacsguard audit verify` checks the hash chain;
- reported: failed operations, p50/p99 per operation (C-STORE, C-FIND) and of association
  set-up, the server's peak RSS (VmHWM of its process tree) and CPU time, the clients' CPU.

The same clients then run against Orthanc 1.10 from Debian (plain DICOM, any AE may store
and find, no user identity check) as a row for context only: it does not authenticate or
encrypt anything, so its numbers are a floor, not a like-for-like peer.

The machine has 2 cores: the server and the 10 client processes share them, and the load
average is recorded before and after.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore
from tests.interop.peers import executable, free_port, peer_env

from benchmarks._measure import latency_summary
from benchmarks.archive.load_clients import ClientResult, ClientSpec, run_client
from benchmarks.archive.peers import Orthanc, Processes

STORERS = 6
QUERIERS = 4
OUR_AET = "PACSGUARD"
TARGETS = {"store_p99_ms": 100.0, "setup_p99_ms": 50.0, "peak_rss_mib": 200.0}


def _pacsguard() -> str:
    return str(Path(sys.executable).with_name("pacsguard"))


def _cli(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [_pacsguard(), *args], input=stdin, env=peer_env(), capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pacsguard {' '.join(args[:2])} failed: {done.stdout}{done.stderr}")
    return done.stdout


def prepare_pacsguard(data_dir: Path, seed: int) -> dict[str, str]:
    """A data folder set up with the CLI, as a new user would; the two passwords."""
    rng = random.Random(seed)
    passwords = {
        "modality": "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(20)),
        "viewer": "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(20)),
    }
    _cli("init", "--data-dir", str(data_dir))
    for user, password in passwords.items():
        _cli("user", "add", user, "--role", user, "--password-stdin", "--data-dir", str(data_dir),
             stdin=password + "\n")  # fmt: skip
    _cli("ae", "add", "MODALITY", "--auth", "user-password", "--username", "modality",
         "--permission", "echo,store", "--data-dir", str(data_dir))  # fmt: skip
    _cli("ae", "add", "VIEWER", "--auth", "user-password", "--username", "viewer",
         "--permission", "echo,find", "--data-dir", str(data_dir))  # fmt: skip
    return passwords


@contextmanager
def pacsguard_serve(
    data_dir: Path, processes: Processes, *, self_check: bool = True, workers: int | None = None
) -> Iterator[tuple[int, int]]:
    """(pid, TLS port) of `pacsguard serve` once it said "ready"; stopped (SIGTERM) after."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}.serve.log"
    argv = [_pacsguard(), "serve", "--data-dir", str(data_dir), "--port", str(port)]
    if not self_check:
        argv.append("--no-self-check")
    offset = log.stat().st_size if log.exists() else 0  # a restart appends to the log
    env = peer_env()
    if workers is not None:  # [server] workers
        env["PACSGUARD_SERVER_WORKERS"] = str(workers)
    proc = processes.start(argv, log, env=env)
    deadline = time.monotonic() + 120
    while b"ready" not in log.read_bytes()[offset:]:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pacsguard serve did not start: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    try:
        yield proc.pid, port
    finally:
        processes.stop(proc)
        if proc.returncode not in (0, -15):
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"pacsguard serve exited {proc.returncode}: {tail}")


# --- measuring the server -------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (worker processes, if any)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
    return found


def _status_kib(pid: int, name: str) -> int:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    with suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


class ServerWatch:
    """Peak RSS (VmHWM, and sampled VmRSS of the whole process tree) and CPU time of a server."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_before = sum(_cpu_s(p) for p in _tree(pid))
        self.rss_before_kib = sum(_status_kib(p, "VmRSS") for p in _tree(pid))
        self.max_tree_rss_kib = self.rss_before_kib
        self.hwm_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            tree = _tree(self.pid)
            self.max_tree_rss_kib = max(
                self.max_tree_rss_kib, sum(_status_kib(p, "VmRSS") for p in tree)
            )
            for p in tree:
                self.hwm_kib[p] = max(self.hwm_kib.get(p, 0), _status_kib(p, "VmHWM"))

    def finish(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        tree = _tree(self.pid)
        for p in tree:
            self.hwm_kib[p] = max(self.hwm_kib.get(p, 0), _status_kib(p, "VmHWM"))
        return {
            "processes": len(self.hwm_kib),
            "rss_before_mib": round(self.rss_before_kib / 1024, 1),
            "peak_rss_mib": round(self.hwm_kib.get(self.pid, 0) / 1024, 1),
            "peak_rss_tree_sum_of_hwm_mib": round(sum(self.hwm_kib.values()) / 1024, 1),
            "max_sampled_tree_rss_mib": round(self.max_tree_rss_kib / 1024, 1),
            "cpu_s": round(sum(_cpu_s(p) for p in tree) - self.cpu_before, 1),
        }


# --- the load ---------------------------------------------------------------------------------


def client_specs(
    *,
    port: int,
    called_ae: str,
    ca_file: Path | None,
    passwords: dict[str, str] | None,
    duration_s: float,
    per_store_association: int,
    per_find_association: int,
    seed: int,
    storers: int = STORERS,
    queriers: int = QUERIERS,
    start_in_s: float = 8.0,
) -> list[ClientSpec]:
    """Specs of `storers` storing and `queriers` querying clients that all start in
    `start_in_s` (by then every client process has imported pynetdicom and waits)."""
    start_at = time.time() + start_in_s
    specs = []
    for index in range(storers + queriers):
        store = index < storers
        user = "modality" if store else "viewer"
        specs.append(
            ClientSpec(
                role="store" if store else "find",
                index=index,
                host="127.0.0.1",
                port=port,
                called_ae=called_ae,
                calling_ae="MODALITY" if store else "VIEWER",
                source_address=f"127.0.0.{20 + index}",
                username=user if passwords else None,
                password=passwords[user] if passwords else None,
                ca_file=str(ca_file) if ca_file else None,
                start_at=start_at,
                duration_s=duration_s,
                per_association=per_store_association if store else per_find_association,
                seed=seed,
            )
        )
    return specs


def run_clients(specs: Sequence[ClientSpec]) -> tuple[list[ClientResult], float]:
    """Every client in its own process (spawned: a clean interpreter each); wall seconds."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(specs)) as pool:
        results = pool.map(run_client, specs, chunksize=1)
    started = min(s.start_at for s in specs)
    return results, time.time() - started


def find_stored(
    port: int,
    called_ae: str,
    stored: Sequence[tuple[str, str, str]],
    *,
    ca_file: Path | None,
    identity: tuple[str, str] | None,
) -> dict[str, Any]:
    """Look for every acknowledged instance: one IMAGE-level C-FIND per stored series."""
    import ssl

    from benchmarks.archive.load_clients import identity_item, only_the_sender_takes_responses

    by_series: dict[tuple[str, str], set[str]] = {}
    for study, series, sop in stored:
        by_series.setdefault((study, series), set()).add(sop)
    ae = AE(ae_title="VIEWER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    kwargs: dict[str, Any] = {}
    if ca_file is not None:
        kwargs["tls_args"] = (ssl.create_default_context(cafile=str(ca_file)), "127.0.0.1")
    if identity is not None:
        kwargs["ext_neg"] = [identity_item(*identity)]
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, **kwargs)
    if not assoc.is_established:
        raise RuntimeError("the verification association was not accepted")
    only_the_sender_takes_responses(assoc)
    missing, failed = 0, 0
    missing_uids: list[str] = []
    try:
        for (study, series), sops in by_series.items():
            found: set[str] = set()
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = study
            query.SeriesInstanceUID = series
            query.SOPInstanceUID = ""
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                code = int(status.Status) if status and "Status" in status else None
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    found.add(str(identifier.SOPInstanceUID))
                elif code != 0x0000:
                    failed += 1
            missing += len(sops - found)
            missing_uids.extend(sorted(sops - found))
    finally:
        assoc.release()
    return {
        "acknowledged": len(stored),
        "series_queried": len(by_series),
        "missing": missing,
        "queries_failed": failed,
        "missing_uids": missing_uids[:20],
    }


def summarize(results: Sequence[ClientResult], wall_s: float) -> dict[str, Any]:
    stores = [r for r in results if r.role == "store"]
    finds = [r for r in results if r.role == "find"]
    setups = [t for r in results for t in r.setup_s]
    return {
        "wall_s": round(wall_s, 1),
        "associations": sum(r.associations for r in results),
        "operations": sum(r.operations for r in results),
        "failed": sum(r.failures for r in results),
        "lost_by_client": {
            "c_store": [u for r in stores for u in r.lost_store_responses],
            "c_find": sum(r.lost_find_responses for r in finds),
        },
        "failure_notes": [n for r in results for n in r.failure_notes][:30],
        "client_log": [n for r in results for n in r.client_log][:30],
        "c_store": {
            **latency_summary([t for r in stores for t in r.op_s]),
            "per_s": round(sum(len(r.stored) for r in stores) / wall_s, 1),
        },
        "c_find": {
            **latency_summary([t for r in finds for t in r.op_s]),
            "matches": sum(r.matches for r in finds),
        },
        "setup": latency_summary(setups),
        # Each client's first association is its user's first login: one Argon2id
        # verification (by design; then remembered for credential_cache_s).
        "setup_first": latency_summary([r.setup_s[0] for r in results if r.setup_s]),
        "setup_after_first": latency_summary([t for r in results for t in r.setup_s[1:]]),
        "setup_store_clients": latency_summary([t for r in stores for t in r.setup_s]),
        "setup_find_clients": latency_summary([t for r in finds for t in r.setup_s]),
        "clients_cpu_s": round(sum(r.cpu_s for r in results), 1),
    }


def _load_pacsguard(
    work: Path,
    processes: Processes,
    *,
    duration_s: float,
    per_store: int,
    per_find: int,
    seed: int,
    on_running: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    name = "pacsguard" if workers is None else f"pacsguard, {workers} workers"
    data_dir = work / name.replace(", ", "-").replace(" ", "-")
    passwords = prepare_pacsguard(data_dir, seed)
    ca_file = data_dir / "tls" / "ca.crt"
    with pacsguard_serve(data_dir, processes, workers=workers) as (pid, port):
        specs = client_specs(
            port=port, called_ae=OUR_AET, ca_file=ca_file, passwords=passwords,
            duration_s=duration_s, per_store_association=per_store,
            per_find_association=per_find, seed=seed,
        )  # fmt: skip
        watch = ServerWatch(pid)
        if on_running is not None:
            threading.Thread(target=on_running, args=(pid,), daemon=True).start()
        results, wall = run_clients(specs)
        server = watch.finish()
        stored = [s for r in results for s in r.stored]
        identity = ("viewer", passwords["viewer"])
        lookup = find_stored(port, OUR_AET, stored, ca_file=ca_file, identity=identity)
        if lookup["missing"] or lookup["queries_failed"]:
            # Looked for again on a new association: missing for good, or only then?
            time.sleep(2.0)
            again = find_stored(port, OUR_AET, stored, ca_file=ca_file, identity=identity)
            lookup["second_look"] = {k: again[k] for k in ("missing", "missing_uids")}
    audit_log = data_dir / "audit" / "audit.jsonl"
    verify = subprocess.run(
        [_pacsguard(), "audit", "verify", str(audit_log)],
        env=peer_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    fsck = subprocess.run(
        [_pacsguard(), "fsck", "--data-dir", str(data_dir)],
        env=peer_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    audited = audited_stores(audit_log)
    acknowledged = {sop for _, _, sop in stored}
    log_text = (data_dir.parent / f"{data_dir.name}.serve.log").read_text(errors="replace")
    summary = summarize(results, wall)
    counted = re.search(r"fsck: (\d+) instances", fsck.stdout)
    return {
        "target": name,
        **summary,
        "index_instances": int(counted.group(1)) if counted else None,
        "audit_cross_check": {
            "store_lines": len(audited),
            "lost_by_client_but_stored": sum(
                1 for u in summary["lost_by_client"]["c_store"] if u in audited
            ),
            "acknowledged_without_store_line": len(acknowledged - audited),
            "stored_not_acknowledged": sorted(audited - acknowledged)[:20],
        },
        "server_log_tail": [line for line in log_text.splitlines() if " INFO " not in line][-20:],
        "server": server,
        "found_afterwards": lookup,
        "audit_verify": {
            "exit": verify.returncode,
            "output": verify.stdout.strip().splitlines()[-1:] or verify.stderr[-300:],
            "lines": sum(1 for _ in audit_log.open("rb")),
        },
        "fsck": {"exit": fsck.returncode, "output": fsck.stdout.strip().splitlines()[-2:]},
    }


def audited_stores(audit_log: Path) -> set[str]:
    """SOP Instance UIDs of the successful store lines in the audit log."""
    found = set()
    with audit_log.open("rb") as lines:
        for raw in lines:
            record = json.loads(raw)
            if record.get("event") == "store" and record.get("outcome") == 0:
                found.update(v for k, v in record.get("objects", []) if k == "instance")
    return found


def _load_orthanc(
    work: Path, processes: Processes, *, duration_s: float, per_store: int, per_find: int, seed: int
) -> dict[str, Any]:
    # As many DICOM threads as pacsguard's default max_associations (16); Orthanc's default
    # (4) would queue 6 of the 10 clients behind the others.
    orthanc = Orthanc(processes, extra={"DicomThreadsCount": 16})
    orthanc.start(work / "orthanc")
    assert orthanc.proc is not None
    try:
        specs = client_specs(
            port=orthanc.port, called_ae="ORTHANC", ca_file=None, passwords=None,
            duration_s=duration_s, per_store_association=per_store,
            per_find_association=per_find, seed=seed,
        )  # fmt: skip
        watch = ServerWatch(orthanc.proc.pid)
        results, wall = run_clients(specs)
        server = watch.finish()
        stored = [s for r in results for s in r.stored]
        lookup = find_stored(orthanc.port, "ORTHANC", stored, ca_file=None, identity=None)
        counts = orthanc.counts()
    finally:
        orthanc.stop()
    return {
        "target": "orthanc",
        **summarize(results, wall),
        "server": server,
        "found_afterwards": lookup,
        "orthanc_instances": counts["instances"],
    }


def run(
    work: Path,
    *,
    duration_s: float = 60.0,
    per_store: int = 20,
    per_find: int = 10,
    seed: int = 2026,
    orthanc: bool = True,
    on_running: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The whole run; `on_running(pid)` is started in a thread once pacsguard serves (a
    profiler, for diagnosis)."""
    processes = Processes()
    load_before = os.getloadavg()
    try:
        load_pacsguard = functools.partial(
            _load_pacsguard,
            work,
            processes,
            duration_s=duration_s,
            per_store=per_store,
            per_find=per_find,
            seed=seed,
        )
        rows = [load_pacsguard(on_running=on_running)]
        if workers is not None:  # the same load on `[server] workers = N`, for comparison
            rows.append(load_pacsguard(workers=workers))
        load_mid = os.getloadavg()
        if orthanc and executable("Orthanc").exists():
            rows.append(
                _load_orthanc(
                    work,
                    processes,
                    duration_s=duration_s,
                    per_store=per_store,
                    per_find=per_find,
                    seed=seed,
                )
            )
    finally:
        processes.stop_all()
    result: dict[str, Any] = {
        "benchmark": "sustained-load",
        "duration_s": duration_s,
        "storing_clients": STORERS,
        "querying_clients": QUERIERS,
        "stores_per_association": per_store,
        "finds_per_association": per_find,
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after_pacsguard": [round(x, 2) for x in load_mid],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": _versions(),
    }
    result["checks"] = evaluate(rows[0])
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return result


def evaluate(row: dict[str, Any]) -> dict[str, Any]:
    """Correctness (must hold) and the issue's targets (met or not)."""
    found = row["found_afterwards"]
    return {
        "no_failed_operations": server_failures(row) == 0,
        "every_acknowledged_instance_found": found["missing"] == 0 and found["queries_failed"] == 0,
        "fsck_clean": row["fsck"]["exit"] == 0,
        "index_holds_every_acknowledged_instance": row["index_instances"] is not None
        and row["index_instances"] >= found["acknowledged"],
        "audit_chain_intact": row["audit_verify"]["exit"] == 0,
        "every_acknowledged_store_audited": row["audit_cross_check"][
            "acknowledged_without_store_line"
        ]
        == 0,
        "store_p99_ms": _target(row["c_store"].get("p99_ms"), TARGETS["store_p99_ms"]),
        "setup_p99_ms": _target(row["setup"].get("p99_ms"), TARGETS["setup_p99_ms"]),
        "peak_rss_mib": _target(row["server"]["peak_rss_mib"], TARGETS["peak_rss_mib"]),
    }


def server_failures(row: dict[str, Any]) -> int:
    """Failed operations, less those the client lost after the server had done its part
    (pynetdicom's reactor race: the response arrived; for a C-STORE, the instance is stored
    and audited; a lost C-FIND answer is read-only)."""
    lost = row["lost_by_client"]
    stored = row.get("audit_cross_check", {}).get("lost_by_client_but_stored", 0)
    return int(row["failed"]) - int(stored) - int(lost["c_find"])


def _target(value: float | None, limit: float) -> dict[str, Any]:
    return {"value": value, "target": f"< {limit:g}", "met": value is not None and value < limit}


def _versions() -> dict[str, str]:
    import pydicom
    import pynetdicom

    orthanc = subprocess.run(
        [str(executable("Orthanc")), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "python": sys.version.split()[0],
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "orthanc": orthanc[0] if orthanc else "?",
    }


def _peak_rss(row: dict[str, Any]) -> str:
    """The server's peak RSS: its process's VmHWM, or the sum over its processes (workers)."""
    server = row["server"]
    if server.get("processes", 1) > 1 and row["target"].startswith("pacsguard,"):
        return f"{server['peak_rss_tree_sum_of_hwm_mib']} (sum of {server['processes']})"
    return str(server["peak_rss_mib"])


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "# Sustained load: 6 storing + 4 querying associations",
        "",
        f"{result['storing_clients']} storing clients (a new association per "
        f"{result['stores_per_association']} C-STOREs of 64x64 16-bit images, one study each) and "
        f"{result['querying_clients']} querying clients (a new association per "
        f"{result['finds_per_association']} study-level C-FINDs by Patient ID) for "
        f"{result['duration_s']:g} s against one `pacsguard serve` (default config from "
        "`pacsguard init`, users and AEs added with `pacsguard user add` / `pacsguard ae add`, "
        "TLS, PS3.7 username + passcode). Clients: pynetdicom, one process each, each from its "
        f"own loopback address. Machine: {machine['cpus']} CPUs shared by the server and the "
        f"10 client processes; load average before {_load(machine['load_average_before'])}, "
        f"after the pacsguard run {_load(machine['load_average_after_pacsguard'])}, at the end "
        f"{_load(machine['load_average_after'])}. Measured {result.get('measured_at', '?')}.",
        "",
        "| target | ops | failed | C-STORE p50 / p99 ms | stores/s | C-FIND p50 / p99 ms | "
        "set-up p50 / p99 ms, all | set-up p50 / p99 ms, after each client's first | "
        "associations | server peak RSS MiB | server CPU s | clients CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        store, find, setup = row["c_store"], row["c_find"], row["setup"]
        warm = row["setup_after_first"]
        lines.append(
            f"| {row['target']} | {row['operations']} | {row['failed']} | "
            f"{store.get('p50_ms')} / {store.get('p99_ms')} | {store['per_s']} | "
            f"{find.get('p50_ms')} / {find.get('p99_ms')} | "
            f"{setup.get('p50_ms')} / {setup.get('p99_ms')} | "
            f"{warm.get('p50_ms')} / {warm.get('p99_ms')} | {row['associations']} | "
            f"{_peak_rss(row)} | {row['server']['cpu_s']} | "
            f"{row['clients_cpu_s']} |"
        )
    lines += ["", "Checks (pacsguard):", ""]
    for name, value in result["checks"].items():
        if isinstance(value, dict):
            verdict = "met" if value["met"] else "NOT met"
            lines.append(f"- {name}: {value['value']} (target {value['target']}): {verdict}")
        else:
            lines.append(f"- {name}: {'yes' if value else 'NO'}")
    ours = result["rows"][0]
    found = ours["found_afterwards"]
    lines += [
        "",
        f"pacsguard: {found['acknowledged']} acknowledged instances, {found['missing']} missing "
        f"from IMAGE-level C-FIND over {found['series_queried']} series; "
        f"{' '.join(' '.join(ours['fsck']['output']).split())}; audit verify: "
        f"{' '.join(ours['audit_verify']['output'])} ({ours['audit_verify']['lines']} lines). "
        f"Each client's first association (its user's first login: one Argon2id "
        f"verification, then remembered): p50 {ours['setup_first'].get('p50_ms')} ms, max "
        f"{ours['setup_first'].get('max_ms')} ms over {ours['setup_first'].get('n')}. "
        f"Set-up p50 / p99 for the storing clients "
        f"{ours['setup_store_clients'].get('p50_ms')} / "
        f"{ours['setup_store_clients'].get('p99_ms')} ms, querying clients "
        f"{ours['setup_find_clients'].get('p50_ms')} / "
        f"{ours['setup_find_clients'].get('p99_ms')} ms. Peak RSS is VmHWM of the server "
        f"process ({ours['server']['processes']} process(es) in its tree, sum of their VmHWM "
        f"{ours['server']['peak_rss_tree_sum_of_hwm_mib']} MiB).",
    ]
    if len(result["rows"]) > 1:
        lines += [
            "",
            "Orthanc (context, not like-for-like): Debian's Orthanc with the interop harness's "
            "open profile (plain DICOM, no authentication, no encryption at rest, "
            '"SyncStorageArea": true), the same clients without TLS or user identity.',
        ]
    for row in result["rows"][1:]:
        if not row["target"].startswith("pacsguard,"):
            continue
        found = row["found_afterwards"]
        lines += [
            "",
            f"{row['target']} (`[server] workers`, for comparison; a supervisor and its "
            f"workers, peak RSS the sum of their VmHWM): {found['acknowledged']} acknowledged "
            f"instances, {found['missing']} missing; "
            f"{' '.join(' '.join(row['fsck']['output']).split())}; audit verify exit "
            f"{row['audit_verify']['exit']} ({row['audit_verify']['lines']} lines); "
            f"{row['audit_cross_check']['acknowledged_without_store_line']} acknowledged stores "
            "without their audit line.",
        ]
    notes = [n for row in result["rows"] for n in row["failure_notes"]]
    if notes:
        lines += ["", "First failures:", "", *(f"- {n}" for n in notes[:10])]
    return "\n".join(lines) + "\n"


def _load(values: Sequence[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)
