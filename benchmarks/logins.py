"""`python -m benchmarks.logins`: association set-up with PS3.7 passwords under load.

Each login verifies an Argon2id hash (64 MiB, tens of ms of CPU). `pacsguard serve` runs as
its own process on loopback; `--clients` concurrent clients (asyncio, one process) each open
and release `--rounds` associations in a row, as AE LOAD with user-identity type 2 (username
and passcode). Measured: set-up time (connect to A-ASSOCIATE-AC) percentiles, cold (first
round) and warm, and the server's peak RSS (VmHWM). Twice: with the default credential cache,
and with `credential_cache_s = 0` (every login verified, at most two at once). Results in
benchmarks/results/logins.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context
from tests.integration.serve.conftest import free_port

from benchmarks._measure import latency_summary
from pacsguard.archive.security.bootstrap import hash_secret, initialize
from pacsguard.dicom import uids
from pacsguard.dicom.ul import RELEASE_RQ_BYTES

RESULTS = Path(__file__).parent / "results"
PASSWORD = "load-test-passcode-" + "x" * 12
PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))


def _config(data_dir: Path) -> None:
    """A user-password peer, and limits that let 16 of its associations run at once."""
    initialize(data_dir)
    config = data_dir / "pacsguard.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace("max_associations = 16", "max_associations = 32")
    text = text.replace("max_pending_per_source = 8", "max_pending_per_source = 64")
    text += f"""
[users.loaduser]
password_hash = "{hash_secret(PASSWORD)}"
roles = ["viewer"]

[[ae]]
ae_title = "LOAD"
auth = "user-password"
username = "loaduser"
permissions = ["echo"]
"""
    text = text.replace(
        "# max_associations_per_ae = 8\n# max_associations_per_user = 8",
        "max_associations_per_ae = 32\nmax_associations_per_user = 32",
    )
    config.write_text(text, encoding="utf-8")


def _request() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = "LOAD"
    primitive.called_ae_title = "PACSGUARD"
    context = build_context(uids.VERIFICATION)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"loaduser"
    identity.secondary_field = PASSWORD.encode()
    primitive.user_information = [max_length, identity]
    return bytes(A_ASSOCIATE_RQ(primitive).encode())


async def _read_pdu(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(6)
    return header + await reader.readexactly(int.from_bytes(header[2:6], "big"))


async def _one(port: int, request: bytes) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(_read_pdu(reader), 60)
        elapsed = time.perf_counter() - started
        if answer[0] != 0x02:
            raise RuntimeError(f"association not accepted (PDU type {answer[0]:#x})")
        writer.write(RELEASE_RQ_BYTES)
        await asyncio.wait_for(_read_pdu(reader), 60)
        return elapsed
    finally:
        writer.close()


async def _load(port: int, clients: int, rounds: int) -> list[list[float]]:
    """rounds x clients set-up times; each round starts all clients at once."""
    request = _request()
    times = []
    for _ in range(rounds):
        times.append(list(await asyncio.gather(*(_one(port, request) for _ in range(clients)))))
    return times


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def measure(work: Path, clients: int, rounds: int, cache_s: float | None) -> dict[str, Any]:
    data_dir = work / f"data-{cache_s}"
    _config(data_dir)
    port = free_port()
    env = dict(os.environ)
    if cache_s is not None:
        env["PACSGUARD_SECURITY_CREDENTIAL_CACHE_S"] = str(cache_s)
    log = work / f"serve-{cache_s}.log"
    argv = [PACSGUARD, "serve", "--data-dir", str(data_dir), "--no-self-check"]
    argv += ["--port", str(free_port()), "--plaintext-port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        rss_before = _kib(proc.pid, "VmRSS")
        times = asyncio.run(_load(port, clients, rounds))
        hwm = _kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "credential_cache_s": 120.0 if cache_s is None else cache_s,
        "clients": clients,
        "rounds": rounds,
        "cold_first_round": latency_summary(times[0]),
        "warm_later_rounds": latency_summary([t for r in times[1:] for t in r]),
        "all": latency_summary([t for r in times for t in r]),
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round(hwm / 1024, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Association set-up with PS3.7 username + passcode (Argon2id) under load",
        "",
        f"{result['clients']} concurrent clients x {result['rounds']} rounds, loopback, "
        f"`pacsguard serve` as its own process; measured {result['measured_at']} "
        f"(load average at start {result['load_average']}).",
        "",
        "| credential cache | phase | n | p50 ms | p95 ms | p99 ms | max ms | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for phase in ("cold_first_round", "warm_later_rounds", "all"):
            p = run[phase]
            lines.append(
                f"| {run['credential_cache_s']:g} s | {phase.replace('_', ' ')} | {p['n']} | "
                f"{p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p['max_ms']} | "
                f"{run['peak_rss_mib']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.logins")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pacsguard-logins-") as tmp:
        runs = [
            measure(Path(tmp), args.clients, args.rounds, None),
            measure(Path(tmp), args.clients, max(2, args.rounds // 4), 0.0),
        ]
    result = {
        "clients": args.clients,
        "rounds": args.rounds,
        "runs": runs,
        "load_average": " ".join(f"{x:.1f}" for x in load),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "logins.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (RESULTS / "logins.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
