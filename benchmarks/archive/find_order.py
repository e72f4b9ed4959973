"""What the query engine's stable order (for offset/limit) costs against the unordered page.

`python -m benchmarks.archive.find_order [--studies N] [--pairs P] [--base REV]`: one SQLite
index (SQLCipher-encrypted, as the archive keeps it) of N studies shaped like the archive
benchmark's C-FIND set (ten years of StudyDate, ~2.5 studies per patient), then for each
query shape, interleaved pairs of (the plan at REV, default 5ba4acb: no order) and (this
tree's plan: ordered, with offset). One sample runs the queries of the shape (repeated to
last about half a second), with the service's page size (`find_result_cap` 1000, plus
one). Reports, per shape, the median of the per-pair ratios (ordered / unordered) and their
range, both medians in ms, an A/A row (the base plan on both sides: the noise) and the load
average. Both plans run in this process on the same connection pool: only the SQL differs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.archive.data import DAYS, FIRST_DAY, FindStudy
from benchmarks.archive.find import RETURN_KEYS, bulk_insert, make_queries
from pacsguard.archive.index import query as this_query
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.model import QueryRequest
from pacsguard.dicom.levels import Level, QueryRoot

RESULTS = Path(__file__).parent.parent / "results"
PAGE = 1001  # the service asks for find_result_cap (1000) plus one
SAMPLE_S = 0.5
_SYLLABLES = ("zor", "vak", "quil", "bex", "tram", "wub", "nix", "pol", "yrn", "gath")


def studies(count: int, seed: int) -> list[FindStudy]:
    rng = random.Random(seed)
    patients = max(1, count * 2 // 5)
    people = [
        (f"PGB{p:07d}", "Synthetic" + "".join(rng.choice(_SYLLABLES) for _ in range(3)) + "^Bo")
        for p in range(patients)
    ]
    found = []
    for index, owner in enumerate(sorted(rng.randrange(patients) for _ in range(count))):
        patient_id, name = people[owner]
        uid = f"2.25.{seed * 10**9 + index}"
        found.append(
            FindStudy(
                study_uid=uid,
                patient_id=patient_id,
                patient_name=name,
                birth_date="19700101",
                sex="F",
                study_date=(FIRST_DAY + timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d"),
                study_time="120000",
                accession=f"ACC{index:09d}",
                size=100,
                sha256=hashlib.sha256(uid.encode()).hexdigest(),
            )
        )
    return found


def base_plan(rev: str) -> ModuleType:
    """The query module as it is at `rev`, loaded beside this tree's."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/pacsguard/archive/index/query.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "base_query.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("base_query", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_query"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True, slots=True)
class Row:
    shape: str
    queries: int
    unordered_ms: float
    ordered_ms: float
    ratio_median: float
    ratio_min: float
    ratio_max: float


def _runner(index: SqlIndex, plan: Callable[[QueryRequest, str], Any]) -> Callable[[Any], int]:
    def run(requests: Sequence[QueryRequest]) -> int:
        found = 0
        with index._engine.connect() as conn:
            for request in requests:
                compiled = plan(request, index.dialect)
                found += len([compiled.response(r) for r in conn.execute(compiled.statement)])
        return found

    return run


def measure(studies_count: int, pairs: int, seed: int, rev: str) -> dict[str, Any]:
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="find-order-"))
    index = SqlIndex(f"sqlite:///{work / 'index.db'}", key=b"k" * 32)
    try:
        made = studies(studies_count, seed)
        bulk_insert(f"sqlite:///{work / 'index.db'}", b"k" * 32, made)
        shapes: dict[str, list[dict[str, str]]] = {}
        for q in make_queries(made, 100, seed):
            shapes.setdefault(q.kind, []).append(q.keys)
        shapes["universal (capped)"] = [{}] * 5
        shapes["StudyDate 1 year (capped)"] = [{"StudyDate": "20180101-20181231"}] * 5
        base = base_plan(rev).plan
        rows = []
        # The first shape again with the base plan on both sides: what noise alone shows.
        control = next(iter(shapes))
        runs = [(shape, keys, this_query.plan) for shape, keys in shapes.items()]
        runs.append((f"A/A control: {control}, base against base", shapes[control], base))
        for shape, keys, plan in runs:
            old = _runner(index, base)
            new = _runner(index, plan)
            requests = [
                QueryRequest(
                    QueryRoot.STUDY,
                    Level.STUDY,
                    {**dict.fromkeys(RETURN_KEYS, ""), "NumberOfStudyRelatedInstances": "", **k},
                    limit=PAGE,
                )
                for k in keys
            ]
            assert old(requests) == new(requests)  # same number of matches; also warms up
            started = time.perf_counter()
            old(requests)
            # Each sample lasts about SAMPLE_S: short ones measure the scheduler, not the SQL.
            requests = requests * max(1, round(SAMPLE_S / (time.perf_counter() - started)))
            ratios, old_s, new_s = [], [], []
            for n in range(pairs):
                took = {}
                for side in ("old", "new") if n % 2 == 0 else ("new", "old"):
                    started = time.perf_counter()
                    (old if side == "old" else new)(requests)
                    took[side] = time.perf_counter() - started
                old_s.append(took["old"])
                new_s.append(took["new"])
                ratios.append(took["new"] / took["old"])
            rows.append(
                Row(
                    shape,
                    len(requests),
                    round(statistics.median(old_s) * 1000, 2),
                    round(statistics.median(new_s) * 1000, 2),
                    round(statistics.median(ratios), 3),
                    round(min(ratios), 3),
                    round(max(ratios), 3),
                )
            )
    finally:
        index.close()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "studies": studies_count,
        "pairs": pairs,
        "base": rev,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "rows": [asdict(r) for r in rows],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Query order: the stable order (offset/limit) against the unordered page",
        "",
        f"SQLite index with SQLCipher, {result['studies']} studies, {result['pairs']} "
        f"interleaved pairs per shape, base `{result['base']}`; load average "
        f"{result['load_before'][0]} before, {result['load_after'][0]} after (2 CPUs). One "
        "sample = the shape's queries, repeated to last ~0.5 s; ratio = ordered / unordered per "
        "pair; queries = per sample; the A/A row runs the base plan on both sides (noise).",
        "",
        "| shape | queries | unordered (ms) | ordered (ms) | ratio median | range |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['shape']} | {r['queries']} | {r['unordered_ms']} | {r['ordered_ms']} | "
            f"{r['ratio_median']} | {r['ratio_min']}-{r['ratio_max']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.archive.find_order")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--base", default="5ba4acb")  # the last commit before the order
    args = parser.parse_args(argv)
    result = measure(args.studies, args.pairs, args.seed, args.base)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "find-order.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (RESULTS / "find-order.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
