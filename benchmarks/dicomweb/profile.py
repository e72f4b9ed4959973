"""Where pacsguard's DICOMweb time goes: py-spy samples `pacsguard serve` while one client
runs each operation at concurrency 1, then the stacks are summed per function.

`python -m benchmarks.dicomweb.profile [--studies N]` writes
benchmarks/results/dicomweb-profile.md (not part of the comparison: py-spy's sampling slows
the server a little).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks.archive.peers import Processes
from benchmarks.dicomweb import data, workload
from benchmarks.dicomweb.run import LOAD_BATCH
from benchmarks.dicomweb.servers import Server, start_pacsguard

RESULTS = Path(__file__).parent.parent / "results"


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if not found.exists():
        raise RuntimeError("py-spy is not installed in this virtualenv: pip install py-spy")
    return str(found)


def profiled(
    server: Server, requests: Sequence[workload.Request], out: Path, *, idle: bool
) -> tuple[float, Counter[str], Counter[str], int]:
    """Run `requests` (concurrency 1) under py-spy; seconds, inclusive and self sample counts
    per function, total samples."""
    argv = [py_spy(), "record", "--pid", str(server.pid), "--format", "raw", "--rate", "200",
            "--output", str(out), "--nonblocking"]  # fmt: skip
    if idle:
        argv.append("--idle")
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach
    timed = workload.run(server, requests, 1)
    spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
    _, err = spy.communicate(timeout=60)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-1000:]}")
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return timed.seconds / max(1, timed.count), inclusive, own, total


def _short(frame: str) -> str:
    """py-spy's "function (path/to/module.py:123)" as "function (module.py)"."""
    function, _, where = frame.partition(" (")
    if not where:
        return frame
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dicomweb.profile")
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=150)
    args = parser.parse_args()
    lines = [
        "# Where pacsguard's DICOMweb time goes (py-spy)",
        "",
        f"Load average before: {[round(x, 2) for x in os.getloadavg()]}. py-spy 200 Hz on "
        f"`pacsguard serve` (all threads), {args.studies} studies indexed, concurrency 1. "
        "'wall' counts samples of threads waiting too (--idle), 'CPU' only running ones.",
    ]
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="pacsguard-profile-") as tmp:
        work = Path(tmp)
        try:
            server = start_pacsguard(work, processes)
            index = data.index_data(work, args.studies, 2026)
            batches = [index.files[i : i + LOAD_BATCH] for i in range(0, args.studies, LOAD_BATCH)]
            workload.run(server, [workload.stow(b) for b in batches], 2)
            series = data.wado_series(2, 16, 2026)
            for s in series:
                workload.run(server, [workload.stow(s.files)], 1)
            shapes = data.query_shapes(index.studies, args.requests, 2026)
            source = data.StowSource(2027)
            cases: list[tuple[str, list[workload.Request]]] = [
                ("QIDO-RS PatientID", [workload.qido(q) for q, _ in shapes[0].queries]),
                ("WADO-RS series", [workload.wado_series(s) for s in series] * 8),
                ("STOW-RS 1 instance", [workload.stow([f]) for f in source.take(40)]),
            ]
            for name, requests in cases:
                for idle in (False, True):
                    per, inclusive, own, total = profiled(
                        server, requests, work / f"{name}-{idle}.txt", idle=idle
                    )
                    lines += ["", f"## {name}, {'wall' if idle else 'CPU'} "
                              f"({per * 1000:.1f} ms per request, {total} samples)", "",
                              "| inclusive % | self % | function |", "|---|---|---|"]  # fmt: skip
                    for frame, count in inclusive.most_common(40):
                        lines.append(
                            f"| {100 * count / total:.1f} | {100 * own[frame] / total:.1f} "
                            f"| `{frame}` |"
                        )
                    if name.startswith("STOW"):  # the next run needs instances not yet stored
                        requests[:] = [workload.stow([f]) for f in source.take(40)]
        finally:
            processes.stop_all()
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dicomweb-profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
