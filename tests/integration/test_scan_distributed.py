"""Sharded scans on real Dask distributed clusters against the lab farm, all on loopback.

- a `distributed.LocalCluster` of two worker processes: every target once, verdicts as the
  ground truth says, shards spread over both workers;
- a worker process killed (SIGKILL) mid-shard: the shard runs again, every target once;
- a scheduler and workers started as separate `dask scheduler` / `dask worker` processes,
  driven through `pacsguard scan --cluster tcp://... --store`: the run lands in the history
  store once;
- the coordinator (`pacsguard scan --cluster local:2`) killed with SIGKILL mid-run, then
  `--resume RUN_ID`: every target exactly once, and no host of a finished shard probed again;
- a web target and DIMSE targets: the records a shard writes are those of a one-process scan.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster, get_task_stream

from pacsguard.cli import main
from pacsguard.cli.scan import scan_scope
from pacsguard.dicom.connect import Timeouts
from pacsguard.errors import ClusterError, ResumeError
from pacsguard.lab.profiles import Profile, plan_farm
from pacsguard.lab.truth import farm_truth
from pacsguard.scan.distributed import ClusterAddress, ShardedRun, scan_on_cluster, shards
from pacsguard.scan.geo import GeoDatabases
from pacsguard.scan.journal import done_shards
from pacsguard.scan.model import Target
from pacsguard.scan.probe import ProbeOptions
from pacsguard.scan.scheduler import Limits
from tests.mmdb import asn_record, country_record, write_mmdb

from .conftest import RunningFarm

BIN = Path(sys.executable).parent
OPTIONS = ProbeOptions(timeouts=Timeouts(connect=2.0, read=2.0), total_timeout=30.0)
# Where verdicts are compared with the truth: the CLI's defaults, since the farm (one thread)
# shares a loaded two-core machine with the workers and its slowest answers can pass 2 s.
PATIENT = ProbeOptions(timeouts=Timeouts(connect=3.0, read=5.0), total_timeout=60.0)
TIMEOUT_ARGS = ["--connect-timeout", "2", "--read-timeout", "2"]
#: Dask's HTTP endpoints (health, metrics; no dashboard without bokeh) on loopback only.
LOOPBACK_ANY_PORT = "127.0.0.1:0"


@pytest.fixture
def local_cluster() -> Iterator[Client]:
    """Two worker processes of two threads (two shards at once) each, scheduler in this
    process, all on loopback."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            host="127.0.0.1",
            dashboard_address=LOOPBACK_ANY_PORT,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _endpoints(records: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    return Counter((r["host"], r["port"]) for r in records)


def _slow_lab(running_farm: type[RunningFarm], base: str, mixed: int, silent: int) -> Any:
    """A mixed farm and a farm of silent hosts, interleaved so every shard holds a slow host
    (a silent host keeps a probe until its read timeout: shards last seconds, not ms)."""
    mix = running_farm(plan_farm(mixed, base_address=f"{base}.1", port=0, seed=5))
    slow = running_farm(
        plan_farm(
            silent, base_address=f"{base}.201", port=0, seed=6, profile=Profile.HOSTILE_SILENT
        )
    )
    per = mixed // silent
    targets: list[Target] = []
    for i, host in enumerate(slow.plan.hosts):
        targets.append(Target(host.address, host.port))
        targets += [Target(h.address, h.port) for h in mix.plan.hosts[i * per : (i + 1) * per]]
    return mix, slow, targets


def test_local_cluster_scans_every_target_once_as_the_truth_says(
    running_farm: type[RunningFarm], local_cluster: Client, tmp_path: Path
) -> None:
    lab = running_farm(plan_farm(24, base_address="127.83.1.1", port=0, seed=7))
    truth = {(h["address"], h["port"]): h for h in farm_truth(lab.plan)["hosts"]}
    targets = [Target(h.address, h.port) for h in lab.plan.hosts]
    run = ShardedRun(
        cluster=ClusterAddress(local_workers=2),
        output=tmp_path / "scan.jsonl",
        state_dir=tmp_path / "state",
        shard_size=5,
    )
    stdout = io.StringIO()
    with get_task_stream(local_cluster) as stream:
        outcome = scan_on_cluster(
            run, targets, PATIENT, Limits(concurrency=16), client=local_cluster, stdout=stdout
        )
    records = _records(run.output)  # type: ignore[arg-type]
    assert _endpoints(records) == Counter(truth.keys())  # every target, exactly once
    for record in records:
        expected = truth[(record["host"], record["port"])]
        assert record["dicom"] == expected["expected_dicom"], expected["profile"]
        if expected["query_exposed"]:
            counts = {k: record["exposure"][k] for k in ("patients", "studies", "series")}
            assert counts == {k: expected["exposed_counts"][k] for k in counts}
    assert sorted(stdout.getvalue().splitlines()) == sorted(run.output.read_text().splitlines())  # type: ignore[union-attr]
    assert outcome.shards_run == 5
    assert outcome.summary.targets == 24
    assert done_shards(run.state_dir, outcome.run_id) == {0, 1, 2, 3, 4}
    # The shards ran in both worker processes, not in this one.
    workers = {t["worker"] for t in stream.data}
    assert len(workers) == 2
    assert os.getpid() not in set(local_cluster.run(os.getpid).values())


def test_a_killed_workers_shard_runs_again(
    running_farm: type[RunningFarm], local_cluster: Client, tmp_path: Path
) -> None:
    _mix, _slow, targets = _slow_lab(running_farm, "127.83.2", mixed=12, silent=6)
    pids: dict[str, int] = local_cluster.run(os.getpid)
    killed: list[tuple[str, tuple[str, ...]]] = []

    def kill_a_busy_worker(_count: int) -> None:
        # After the first shard is written, SIGKILL a worker process in the middle of a shard.
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for address, keys in local_cluster.processing().items():
                if keys and address in pids:
                    os.kill(pids[address], signal.SIGKILL)
                    killed.append((address, tuple(keys)))
                    return
            time.sleep(0.05)

    run = ShardedRun(
        cluster=ClusterAddress(local_workers=2),
        output=tmp_path / "scan.jsonl",
        state_dir=tmp_path / "state",
        shard_size=3,
    )
    outcome = scan_on_cluster(
        run,
        targets,
        OPTIONS,
        Limits(concurrency=8),
        client=local_cluster,
        on_progress=kill_a_busy_worker,
    )
    assert killed, "no shard was running to kill a worker under"
    records = _records(run.output)  # type: ignore[arg-type]
    assert _endpoints(records) == Counter((t.host, t.port) for t in targets)
    assert outcome.shards_run == 6
    assert done_shards(run.state_dir, outcome.run_id) == set(range(6))
    # The killed process is gone; its nanny started a new worker in its place.
    assert killed[0][0] not in local_cluster.scheduler_info()["workers"]


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A process in a session of its own, so that its children can be ended with it."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, the process group this test started; wait until it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    proc.wait(timeout=15)


def _wait_for(predicate: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_scan_on_separate_scheduler_and_worker_processes(
    running_farm: type[RunningFarm], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = running_farm(plan_farm(12, base_address="127.83.3.1", port=0, seed=9))
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = _start(
        [
            str(BIN / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--dashboard-address",
            LOOPBACK_ANY_PORT,
            "--scheduler-file",
            str(scheduler_file),
        ],
        tmp_path / "scheduler.log",
    )
    workers: subprocess.Popen[bytes] | None = None
    try:
        _wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size, "scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = _start(
            [
                str(BIN / "dask"),
                "worker",
                address,
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--dashboard-address",
                LOOPBACK_ANY_PORT,
            ],
            tmp_path / "workers.log",
        )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        out = tmp_path / "scan.jsonl"
        history = f"sqlite:///{tmp_path / 'history.sqlite'}"
        targets = [f"{h.address}:{h.port}" for h in lab.plan.hosts]
        code = main(
            [
                "scan",
                *targets,
                "--cluster",
                address,
                "--shard-size",
                "4",
                "-o",
                str(out),
                "--state-dir",
                str(tmp_path / "state"),
                "--format",
                "table",
                "--store",
                history,
                *TIMEOUT_ARGS,
            ]
        )
        assert code == 1  # the mixed lab has findings
        records = _records(out)
        assert _endpoints(records) == Counter((h.address, h.port) for h in lab.plan.hosts)
        # The finished run went into the history store once, whole.
        capsys.readouterr()
        assert main(["survey", "runs", "--store", history]) == 0
        runs = capsys.readouterr().out.splitlines()
        assert len(runs) == 1
        assert "\tscan\t" in runs[0]
        assert "12 records" in runs[0]
    finally:
        if workers is not None:
            _end_group(workers)
        _end_group(scheduler)


def test_killed_coordinator_resumes_without_probing_finished_shards_again(
    running_farm: type[RunningFarm], tmp_path: Path
) -> None:
    # 24 shards, each with a silent host: three rounds of `local:2`'s eight worker threads.
    mix, slow, targets = _slow_lab(running_farm, "127.83.4", mixed=72, silent=24)
    states = {
        (h.address, h.port): farm.farm.state(h.index)
        for farm in (mix, slow)
        for h in farm.plan.hosts
    }
    out, state = tmp_path / "scan.jsonl", tmp_path / "state"
    argv = [
        str(BIN / "pacsguard"),
        "scan",
        *(f"{t.host}:{t.port}" for t in targets),
        "--cluster",
        "local:2",
        "--shard-size",
        "4",
        "-o",
        str(out),
        "--state-dir",
        str(state),
        *TIMEOUT_ARGS,
    ]
    first = _start(argv, tmp_path / "first.log")
    try:
        _wait_for(lambda: "--resume" in (tmp_path / "first.log").read_text(), "the run id")
        run_id = re.search(r"--resume (\S+)", (tmp_path / "first.log").read_text())
        assert run_id is not None
        _wait_for(lambda: bool(done_shards(state, run_id[1])), "a finished shard", 180)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _end_group(first)  # the coordinator's worker processes, if any outlived it
    done = done_shards(state, run_id[1])
    cut = dict(shards(targets, 4))
    assert 0 < len(done) < len(cut), "kill the coordinator mid-run"
    before = {endpoint: s.connections for endpoint, s in states.items()}

    second = subprocess.run(
        [*argv, "--resume", run_id[1]],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=600,
        start_new_session=True,
        check=False,
    )
    assert second.returncode == 1, second.stderr  # findings, not an error
    records = _records(out)
    assert _endpoints(records) == Counter((t.host, t.port) for t in targets)
    assert done_shards(state, run_id[1]) == set(cut)
    for index, shard in cut.items():
        for t in shard:
            probed_again = states[(t.host, t.port)].connections > before[(t.host, t.port)]
            assert probed_again is (index not in done), (index, t)
    earlier = sum(len(cut[i]) for i in done)
    assert f"{earlier} records written before the resume" in second.stderr


class _OrthancLike(BaseHTTPRequestHandler):
    """A web target: Orthanc's `/system` answer, 404 for everything else."""

    def do_GET(self) -> None:
        if self.path == "/system":
            body = json.dumps({"Name": "ORTHANC", "Version": "1.12.1", "ApiVersion": 22})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = "not found"
            self.send_response(404)
        data = body.encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_shard_probes_web_and_dimse_targets_as_one_process_does(
    running_farm: type[RunningFarm], local_cluster: Client, tmp_path: Path
) -> None:
    lab = running_farm(plan_farm(3, base_address="127.83.5.1", port=0, seed=4))
    web = ThreadingHTTPServer(("127.0.0.1", 0), _OrthancLike)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    try:
        targets = [Target("127.0.0.1", web.server_address[1], "http")]
        targets += [Target(h.address, h.port) for h in lab.plan.hosts]
        run = ShardedRun(
            cluster=ClusterAddress(local_workers=2),
            output=tmp_path / "scan.jsonl",
            state_dir=tmp_path / "state",
            shard_size=2,
        )
        scan_on_cluster(run, targets, PATIENT, Limits(), client=local_cluster)
        alone = io.StringIO()
        asyncio.run(scan_scope(targets, PATIENT, Limits(), jsonl=alone))
    finally:
        web.shutdown()
        web.server_close()
        thread.join(timeout=10)

    def comparable(text: str) -> dict[tuple[str, int], dict[str, Any]]:
        out = {}
        for line in text.splitlines():
            record = json.loads(line)
            for volatile in ("duration_s", "scanned_at"):
                record.pop(volatile)
            out[(record["host"], record["port"])] = record
        return out

    sharded = comparable(run.output.read_text())  # type: ignore[union-attr]
    assert sharded == comparable(alone.getvalue())
    web_record = sharded[("127.0.0.1", web.server_address[1])]
    assert web_record["transport"] == "http"
    assert web_record["reachable"] is True


def test_workers_locate_hosts_from_the_geoip_files_as_one_process_does(
    running_farm: type[RunningFarm], local_cluster: Client, tmp_path: Path
) -> None:
    lab = running_farm(
        plan_farm(4, base_address="127.83.6.1", port=0, seed=3, profile=Profile.OPEN)
    )
    targets = [Target(h.address, h.port) for h in lab.plan.hosts]
    geo = GeoDatabases(
        country_db=write_mmdb(
            tmp_path / "country.mmdb",
            "GeoLite2-Country",
            {"127.83.6.0/31": country_record("SE"), "127.83.6.2/31": country_record("PT")},
        ),
        asn_db=write_mmdb(
            tmp_path / "asn.mmdb", "GeoLite2-ASN", {"127.83.0.0/16": asn_record(64601, "Lab")}
        ),
    )
    run = ShardedRun(
        cluster=ClusterAddress(local_workers=2),
        output=tmp_path / "scan.jsonl",
        state_dir=tmp_path / "state",
        shard_size=1,
    )
    outcome = scan_on_cluster(run, targets, PATIENT, Limits(), client=local_cluster, geo=geo)
    located = {r["host"]: r["location"] for r in _records(run.output)}  # type: ignore[arg-type]
    assert located == {
        "127.83.6.1": {"country": "SE", "asn": 64601, "as_org": "Lab"},
        "127.83.6.2": {"country": "PT", "asn": 64601, "as_org": "Lab"},
        "127.83.6.3": {"country": "PT", "asn": 64601, "as_org": "Lab"},
        "127.83.6.4": {"country": None, "asn": 64601, "as_org": "Lab"},
    }
    # A resume must read the same files: other (or no) GeoIP files are another scan.
    with pytest.raises(ResumeError, match="with other options"):
        scan_on_cluster(
            ShardedRun(
                cluster=ClusterAddress(local_workers=2),
                output=run.output,
                state_dir=run.state_dir,
                shard_size=1,
                resume=outcome.run_id,
            ),
            targets,
            PATIENT,
            Limits(),
            client=local_cluster,
        )
    # A file a worker cannot read is a clear error naming the worker, not a silent null.
    missing = GeoDatabases(country_db=tmp_path / "absent.mmdb")
    with pytest.raises(ClusterError, match=r"worker .*absent\.mmdb"):
        scan_on_cluster(
            ShardedRun(
                cluster=ClusterAddress(local_workers=2),
                output=tmp_path / "again.jsonl",
                state_dir=tmp_path / "state2",
                shard_size=1,
            ),
            targets,
            PATIENT,
            Limits(),
            client=local_cluster,
            geo=missing,
        )
