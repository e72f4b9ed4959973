"""`./dev fuzz [SECONDS]`: run every harness under atheris and print a summary.

    python -m tests.fuzz run [SECONDS] [--jobs N] [--out DIR]   all harnesses, SECONDS of wall
                                                                time in all (default 1200)
    python -m tests.fuzz worker NAME SECONDS OUT                one harness (what `run` starts)
    python -m tests.fuzz replay NAME FILE...                    judge inputs, e.g. a crash
    python -m tests.fuzz seed                                   rewrite the committed seeds
    python -m tests.fuzz keep [--each N] [--out DIR]            commit-sized sample of what a
                                                                run found (each input judged)

Each worker is one libFuzzer process with an address-space limit (RLIMIT_AS), a per-input time
limit (-timeout) and an RSS limit; a crash, a hang or an allocation past the limits leaves an
input in OUT/crashes and the worker is restarted for its remaining time.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.fuzz.harness import CORPUS, INSTRUMENT, TARGETS, corpus_name, judge, load

#: Address space of one worker. A worker maps about 100 MiB (measured: VmPeak of the header
#: worker) and no input of a few KiB may make a parser take more than a few MiB, so an attempt
#: to allocate hundreds of MiB (a length field believed) fails with MemoryError: a crash.
ADDRESS_SPACE: Final = 1024**3
RSS_LIMIT_MB: Final = 512
INPUT_TIMEOUT_S: Final = 10
#: libFuzzer's artifacts, named by -artifact_prefix "<harness>-": what a crash, hang or
#: out-of-memory input leaves behind.
_ARTIFACT = re.compile(r"^(?P<harness>[a-z_]+)-(crash|timeout|oom|leak)-")
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_STATUS = re.compile(r"^#(\d+)\s", re.MULTILINE)
_PYDICOM_SEEDS_MAX: Final = 8192


def _extra_seeds(name: str, out: Path) -> list[str]:
    """pydicom's own small test files seed the header walker (read, never committed)."""
    if name != "header":
        return []
    from pydicom.data import get_testdata_files

    folder = out / "pydicom-seeds"
    folder.mkdir(parents=True, exist_ok=True)
    for path in map(Path, get_testdata_files()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if len(data) <= _PYDICOM_SEEDS_MAX and data[128:132] == b"DICM":
            (folder / corpus_name(data)).write_bytes(data)
    return [str(folder)]


def worker(name: str, seconds: int, out: Path) -> None:
    """One harness under atheris, in this process (never returns)."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    import atheris

    from tests.fuzz import harness as harness_module

    with atheris.instrument_imports(include=list(INSTRUMENT[name])):
        target = harness_module.load(name)
    corpus = out / "corpus" / name
    crashes = out / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    check = target.check

    def one_input(data: bytes) -> None:
        check(data)

    argv = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={target.max_len}",
        f"-artifact_prefix={crashes}/{name}-",
        "-print_final_stats=1",
        str(corpus),
        str(CORPUS / name),
        *_extra_seeds(name, out),
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


@dataclass
class Job:
    name: str
    seconds: int
    started: float = 0.0
    spent: float = 0.0
    inputs: int = 0
    restarts: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)


def _executed(log: Path) -> int:
    text = log.read_text(errors="replace")
    stats = _EXECUTED.findall(text)
    if stats:
        return int(stats[-1])
    status = _STATUS.findall(text)
    return int(status[-1]) if status else 0


def _start(job: Job, out: Path) -> None:
    remaining = max(int(job.seconds - job.spent), 1)
    job.log = out / "logs" / f"{job.name}.{job.restarts}.log"
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with job.log.open("wb") as log:
        job.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz", "worker", job.name, str(remaining), str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    job.started = time.monotonic()


def run(total_seconds: int, jobs: int, out: Path) -> int:
    names = list(TARGETS)
    per_harness = max(total_seconds * jobs // len(names), 10)
    pending = [Job(name, per_harness) for name in names]
    running: list[Job] = []
    finished: list[Job] = []
    begin, started_at = time.monotonic(), time.time()
    print(f"fuzzing {len(names)} harnesses, {per_harness} s each, {jobs} at a time -> {out}")
    while pending or running:
        while pending and len(running) < jobs:
            job = pending.pop(0)
            _start(job, out)
            running.append(job)
        time.sleep(0.5)
        for job in list(running):
            assert job.process is not None
            code = job.process.poll()
            if code is None:
                continue
            job.spent += time.monotonic() - job.started
            job.inputs += _executed(job.log)
            running.remove(job)
            if code != 0 and job.spent < job.seconds - 2 and job.restarts < 50:
                job.restarts += 1  # a crash: go on fuzzing for the remaining time
                pending.insert(0, job)
            else:
                finished.append(job)
                print(f"  {job.name:12} {job.inputs:>10,} inputs in {job.spent:6.0f} s")
    elapsed = time.monotonic() - begin
    artifacts = sorted(
        p
        for p in (out / "crashes").glob("*")
        if _ARTIFACT.match(p.name) and p.stat().st_mtime >= started_at  # this run's only
    )
    total = sum(j.inputs for j in finished)
    print()
    print(f"{'harness':12} {'inputs':>12} {'seconds':>8} {'inputs/s':>9} {'crashes':>8}")
    for job in sorted(finished, key=lambda j: names.index(j.name)):
        crashes = sum(1 for p in artifacts if _ARTIFACT.match(p.name)["harness"] == job.name)  # type: ignore[index]
        rate = job.inputs / job.spent if job.spent else 0.0
        print(f"{job.name:12} {job.inputs:>12,} {job.spent:>8.0f} {rate:>9.0f} {crashes:>8}")
    print(f"{'total':12} {total:>12,} {elapsed:>8.0f} {'':>9} {len(artifacts):>8}")
    for path in artifacts:
        print(f"  crash input: {path}")
    if total < 1_000_000:
        print("fewer than 1,000,000 inputs: give it more SECONDS")
    return 1 if artifacts else 0


def replay(name: str, files: list[Path]) -> int:
    harness = load(name)
    failed = 0
    for path in files:
        try:
            judge(harness, path.read_bytes())
        except Exception as exc:
            failed += 1
            print(f"{path}: {exc.__class__.__name__}: {exc!s:.500}")
    print(f"{len(files) - failed} of {len(files)} inputs pass")
    return 1 if failed else 0


def seed() -> None:
    for name in TARGETS:
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for data in load(name).seeds():
            (folder / corpus_name(data)).write_bytes(data)


def keep(each: int, out: Path, budget: int = 24 * 1024) -> None:
    """Copy up to `each` inputs (at most `budget` bytes) per harness from a run's corpus into
    the committed one: libFuzzer kept each for new coverage; a spread over sizes, small first.
    An input that does not pass its harness (it should not exist: it would be a crash) stops."""
    for name in TARGETS:
        found = sorted((out / "corpus" / name).glob("*"), key=lambda p: (p.stat().st_size, p.name))
        step = max(len(found) // each, 1)
        harness, used = load(name), 0
        for path in found[::step][:each]:
            data = path.read_bytes()
            if used + len(data) > budget:
                break
            judge(harness, data)
            (CORPUS / name / corpus_name(data)).write_bytes(data)
            used += len(data)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run")
    run_p.add_argument("seconds", nargs="?", type=int, default=1200)
    run_p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    run_p.add_argument("--out", type=Path, default=Path("fuzz-out"))
    worker_p = sub.add_parser("worker")
    worker_p.add_argument("name", choices=list(TARGETS))
    worker_p.add_argument("seconds", type=int)
    worker_p.add_argument("out", type=Path)
    replay_p = sub.add_parser("replay")
    replay_p.add_argument("name", choices=list(TARGETS))
    replay_p.add_argument("files", nargs="+", type=Path)
    sub.add_parser("seed")
    keep_p = sub.add_parser("keep")
    keep_p.add_argument("--each", type=int, default=40)
    keep_p.add_argument("--out", type=Path, default=Path("fuzz-out"))
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.seconds, args.jobs, args.out.resolve())
    if args.command == "worker":
        worker(args.name, args.seconds, args.out)
        return 0
    if args.command == "replay":
        return replay(args.name, args.files)
    if args.command == "keep":
        keep(args.each, args.out)
        return 0
    seed()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
