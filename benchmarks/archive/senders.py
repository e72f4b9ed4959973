"""The clients that send an ingest set: dcmtk storescu (one or several at once) and a default
pynetdicom client; each run's wall time and every C-STORE's latency as the client saw it.

storescu logs, with a timestamp, when it sends each C-STORE-RQ and when the response arrives
(`-lc` with a pattern layout at INFO level): the difference is the request's latency, from its
first byte sent to its response received. The pynetdicom client times `send_c_store` itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.interop.peers import LOOPBACK, executable, peer_env

from benchmarks._measure import percentile as nearest_rank

#: dcmtk (oflog) configuration: INFO messages with a microsecond wall-clock timestamp.
_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %m%n
"""
_STAMP = re.compile(
    rb"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) (Sending Store Request|Received Store Response)"
)


@dataclass(frozen=True)
class Sender:
    """How to reach one server: port, AE titles, and what a client adds (TLS, user identity)."""

    port: int
    called: str
    calling: str
    storescu_extra: tuple[str, ...] = ()
    user: str | None = None
    password: str | None = None


@dataclass
class Sent:
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)


def log_config(work: Path) -> Path:
    path = work / "storescu-log.cfg"
    if not path.exists():
        path.write_text(_LOG_CONFIG)
    return path


def storescu_argv(sender: Sender, directory: Path, config: Path) -> list[str]:
    return [
        str(executable("storescu")), "-lc", str(config), "-aet", sender.calling,
        "-aec", sender.called, *sender.storescu_extra, "+sd", LOOPBACK, str(sender.port),
        str(directory),
    ]  # fmt: skip


def pynetdicom_argv(sender: Sender, directory: Path, limit: int | None = None) -> list[str]:
    argv = [
        sys.executable, "-m", "benchmarks.archive.pynetdicom_client", LOOPBACK, str(sender.port),
        sender.called, sender.calling, str(directory),
    ]  # fmt: skip
    if limit is not None:
        argv += ["--limit", str(limit)]
    if sender.user is not None and sender.password is not None:
        argv += ["--user", sender.user, "--password", sender.password]
    return argv


def storescu_latencies(log: bytes) -> list[float]:
    """Milliseconds from each "Sending Store Request" to the next "Received Store Response"."""
    latencies: list[float] = []
    sent: float | None = None
    for line in log.splitlines():
        found = _STAMP.match(line)
        if found is None:
            continue
        h, m, s, ms, us = (int(x) for x in found.groups()[:5])
        moment = ((h * 60 + m) * 60 + s) * 1000.0 + ms + us / 1000.0
        if found.group(6).startswith(b"Sending"):
            sent = moment
        elif sent is not None:
            latencies.append((moment - sent) % 86_400_000.0)  # across midnight
            sent = None
    return latencies


def send(argvs: Sequence[Sequence[str]], *, dcmtk: bool, timeout: float = 1800.0) -> Sent:
    """Run every client at once and wait for all; raises if any fails. Wall time from the
    first start to the last exit, and the latencies of every C-STORE of every client."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            list(a), env=peer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for a in argvs
    ]  # fmt: skip
    outputs: list[tuple[bytes, bytes]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                said = [
                    line
                    for line in (err + b"\n" + out).decode(errors="replace").splitlines()
                    if line.strip() and not line.startswith("XMIT")
                ]
                raise RuntimeError(
                    f"{Path(proc.args[0]).name} failed ({proc.returncode}): "  # type: ignore[index]
                    + " | ".join(said[-8:])
                )
            outputs.append((out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    elapsed = time.perf_counter() - started
    latencies: list[float] = []
    for out, err in outputs:
        if dcmtk:
            latencies += storescu_latencies(err + b"\n" + out)
        else:
            latencies += json.loads(out.decode().strip().splitlines()[-1])["latencies_ms"]
    return Sent(elapsed, latencies)


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (q in percent, nearest rank) of `values`; 0 for none."""
    return nearest_rank(values, q / 100)


def split_set(source: Path, parts: int) -> list[Path]:
    """Move the files of `source` into `parts` sub-folders of consecutive files (whole series
    per sender when the series size divides the share), for concurrent senders."""
    files = sorted(p for p in source.iterdir() if p.is_file())
    share = -(-len(files) // parts)
    folders = []
    for n in range(parts):
        folder = source / f"sender-{n}"
        folder.mkdir()
        for path in files[n * share : (n + 1) * share]:
            path.rename(folder / path.name)
        folders.append(folder)
    return folders
