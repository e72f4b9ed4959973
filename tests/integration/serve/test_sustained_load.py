"""A short replay of the sustained-load benchmark (benchmarks/archive/load.py): correctness only.

`pacsguard serve` as a process (TLS, PS3.7 username + passcode, fsync'd audit log), three
storing and two querying pynetdicom clients at once (threads here; the benchmark gives each a
process), each opening a new association every few operations, for a few seconds. Asserted:
no failed operation, every acknowledged instance found by C-FIND afterwards and audited as
stored, the audit chain intact. Never timing: the numbers are the benchmark's.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.archive.load import (
    audited_stores,
    client_specs,
    find_stored,
    pacsguard_serve,
    server_failures,
    summarize,
)
from benchmarks.archive.load_clients import run_client
from benchmarks.archive.peers import Processes

from pacsguard.archive.audit.log import verify
from pacsguard.archive.security.bootstrap import hash_secret, initialize

PASSWORDS = {"modality": "load-replay-modality-pass", "viewer": "load-replay-viewer-pass"}


def _data_dir(tmp_path: Path) -> Path:
    """What `pacsguard init`, `user add` and `ae add` make (the benchmark runs those)."""
    data_dir = tmp_path / "pacsguard"
    initialize(data_dir)
    config = data_dir / "pacsguard.toml"
    text = config.read_text(encoding="utf-8")
    for user, password in PASSWORDS.items():
        text += f"""
[users.{user}]
password_hash = "{hash_secret(password)}"
roles = ["{user}"]
"""
    text += """
[[ae]]
ae_title = "MODALITY"
auth = "user-password"
username = "modality"
permissions = ["echo", "store"]

[[ae]]
ae_title = "VIEWER"
auth = "user-password"
username = "viewer"
permissions = ["echo", "find"]
"""
    config.write_text(text, encoding="utf-8")
    return data_dir


def test_concurrent_stores_and_queries_with_new_associations_lose_nothing(
    tmp_path: Path,
) -> None:
    data_dir = _data_dir(tmp_path)
    ca_file = data_dir / "tls" / "ca.crt"
    processes = Processes()
    try:
        with pacsguard_serve(data_dir, processes, self_check=False) as (_pid, port):
            specs = client_specs(
                port=port,
                called_ae="PACSGUARD",
                ca_file=ca_file,
                passwords=PASSWORDS,
                duration_s=4.0,
                per_store_association=5,
                per_find_association=3,
                seed=7,
                storers=3,
                queriers=2,
                start_in_s=0.5,
            )
            with ThreadPoolExecutor(len(specs)) as pool:
                results = list(pool.map(run_client, specs))
            stored = [s for r in results for s in r.stored]
            found = find_stored(
                port, "PACSGUARD", stored, ca_file=ca_file, identity=("viewer", PASSWORDS["viewer"])
            )
    finally:
        processes.stop_all()
    summary = summarize(results, 4.0)
    audited = audited_stores(data_dir / "audit" / "audit.jsonl")
    row = {**summary, "audit_cross_check": {"lost_by_client_but_stored": 0}}
    assert server_failures(row) == 0 and summary["failed"] == 0, summary["failure_notes"]
    assert summary["associations"] > len(specs)  # clients associated again as they went
    assert stored and {r.role for r in results if r.operations} == {"store", "find"}
    assert found["missing"] == 0 and found["queries_failed"] == 0, found
    assert {sop for _, _, sop in stored} <= audited
    report = verify(data_dir / "audit" / "audit.jsonl")
    assert report.ok, report.problems
