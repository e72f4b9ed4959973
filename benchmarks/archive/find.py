"""2. C-FIND latency on an index of N studies, pacsguard against Orthanc."""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, insert, select
from tests.interop.peers import (
    LOOPBACK,
)

from benchmarks._measure import percentile
from benchmarks.archive.data import (
    DAYS,
    EXPLICIT_LE,
    FIRST_DAY,
    SC_IMAGE,
    FindStudy,
    write_find_index,
)
from benchmarks.archive.peers import (
    ORTHANC_AET,
    OUR_AET,
    PLAIN_AET,
    Orthanc,
    Pacsguard,
    run_parallel,
    run_timed,
)
from pacsguard.archive.app import index_key
from pacsguard.archive.config import load_settings
from pacsguard.archive.index.matching import normalize_name
from pacsguard.archive.index.schema import instances, patients, series, studies
from pacsguard.archive.index.sql import open_engine
from pacsguard.dicom import uids
from pacsguard.dicom.client import Association, Timeouts, request_association
from pacsguard.dicom.ul import AssociationAccepted, ContextResult, propose

# --- 2. C-FIND ----------------------------------------------------------------------------------


def bulk_insert(index_url: str, key: bytes | None, found: Sequence[FindStudy]) -> int:
    """Add `found` to a pacsguard index in one transaction, row for row what `SqlIndex.add`
    writes for such an instance (entity attributes from the instance, person names also
    case-folded); the blobs are not written (C-FIND reads the index only). Returns the number
    of studies the index then holds."""
    engine = open_engine(index_url, key=key)  # the archive's own settings: SQLCipher key, WAL
    try:
        with engine.begin() as conn:
            first = {
                t.name: int(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one())
                for t in (patients, studies, series, instances)
            }
            patient_ids: dict[str, int] = {}
            patient_rows, study_rows, series_rows, instance_rows = [], [], [], []
            for n, s in enumerate(found, start=1):
                if s.patient_id not in patient_ids:
                    patient_ids[s.patient_id] = first["patients"] + len(patient_ids) + 1
                    patient_rows.append(
                        {
                            "id": patient_ids[s.patient_id],
                            "patient_id": s.patient_id,
                            "patient_name": s.patient_name,
                            "patient_name_key": normalize_name(s.patient_name),
                            "patient_birth_date": s.birth_date,
                            "patient_sex": s.sex,
                        }
                    )
                study_rows.append(
                    {
                        "id": first["studies"] + n,
                        "study_instance_uid": s.study_uid,
                        "patient_fk": patient_ids[s.patient_id],
                        "study_date": s.study_date,
                        "study_time": s.study_time,
                        "study_id": "1",
                        "study_description": "",
                        "accession_number": s.accession,
                        "referring_physician_name": "",
                        "referring_physician_name_key": "",
                    }
                )
                series_rows.append(
                    {
                        "id": first["series"] + n,
                        "series_instance_uid": s.study_uid + ".1",
                        "study_fk": first["studies"] + n,
                        "modality": "OT",
                        "series_number": "1",
                        "series_description": "",
                    }
                )
                instance_rows.append(
                    {
                        "id": first["instances"] + n,
                        "sop_instance_uid": s.study_uid + ".1.1",
                        "series_fk": first["series"] + n,
                        "sop_class_uid": SC_IMAGE,
                        "instance_number": "1",
                        "transfer_syntax_uid": EXPLICIT_LE,
                        "blob_key": s.study_uid + ".1.1",
                        "size": s.size,
                        "sha256": s.sha256,
                    }
                )
            for table, rows in (
                (patients, patient_rows),
                (studies, study_rows),
                (series, series_rows),
                (instances, instance_rows),
            ):
                conn.execute(insert(table), rows)
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(studies)).scalar_one())
    finally:
        engine.dispose()


@dataclass(frozen=True, slots=True)
class Query:
    kind: str
    keys: dict[str, str]
    expected: frozenset[str]


def make_queries(all_studies: Sequence[FindStudy], count: int, seed: int) -> list[Query]:
    """`count` queries, a fifth of each kind, shuffled; each with its expected StudyInstanceUIDs."""
    rng = random.Random(seed)
    by_patient: dict[str, set[str]] = {}
    by_date: dict[str, set[str]] = {}
    for s in all_studies:
        by_patient.setdefault(s.patient_id, set()).add(s.study_uid)
        by_date.setdefault(s.study_date, set()).add(s.study_uid)
    queries: list[Query] = []
    per_kind = max(1, count // 5)
    for _ in range(per_kind):
        s = rng.choice(all_studies)
        queries.append(
            Query("PatientID", {"PatientID": s.patient_id}, frozenset(by_patient[s.patient_id]))
        )
        day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
        text = day.strftime("%Y%m%d")
        queries.append(
            Query("StudyDate day", {"StudyDate": text}, frozenset(by_date.get(text, ())))
        )
        start = FIRST_DAY + timedelta(days=rng.randrange(DAYS - 6))
        week = [(start + timedelta(days=d)).strftime("%Y%m%d") for d in range(7)]
        expected = frozenset(u for d in week for u in by_date.get(d, ()))
        queries.append(Query("StudyDate 7 days", {"StudyDate": f"{week[0]}-{week[-1]}"}, expected))
        s = rng.choice(all_studies)
        prefix = s.patient_name[: len("Synthetic") + 6]
        matches = frozenset(x.study_uid for x in all_studies if x.patient_name.startswith(prefix))
        queries.append(Query("PatientName prefix*", {"PatientName": prefix + "*"}, matches))
        s = rng.choice(all_studies)
        queries.append(
            Query("AccessionNumber", {"AccessionNumber": s.accession}, frozenset({s.study_uid}))
        )
    rng.shuffle(queries)
    return queries


RETURN_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate")


def _identifier(query: Query) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, query.keys.get(keyword, ""))
    for keyword, value in query.keys.items():
        setattr(ds, keyword, value)
    ds.NumberOfStudyRelatedInstances = ""
    return ds


async def _find(assoc: Association, context: ContextResult, query: Query) -> tuple[float, bool]:
    """(seconds, the answers are the expected studies, each with 1 instance, final status 0)."""
    started = time.perf_counter()
    uids: set[str] = set()
    counts_ok = True
    final = None
    async for status, answer in assoc.find(context, _identifier(query)):
        if answer is None:
            final = status
            continue
        uids.add(str(answer.StudyInstanceUID))
        counts_ok &= str(answer.get("NumberOfStudyRelatedInstances", "")).strip() == "1"
    elapsed = time.perf_counter() - started
    return elapsed, counts_ok and final == 0 and uids == query.expected


async def _measure_find(
    endpoints: dict[str, tuple[int, str]], queries: Sequence[Query]
) -> dict[str, tuple[list[float], dict[str, list[float]], int]]:
    opened: dict[str, tuple[Association, ContextResult]] = {}
    try:
        for name, (port, called) in endpoints.items():
            answer, assoc = await request_association(
                LOOPBACK, port, calling_ae=PLAIN_AET, called_ae=called,
                contexts=propose([uids.STUDY_ROOT_FIND]), timeouts=Timeouts(10.0, 600.0),
            )  # fmt: skip
            if assoc is None or not isinstance(answer, AssociationAccepted):
                raise RuntimeError(f"{name} refused the C-FIND association: {answer}")
            context = answer.accepted_context(uids.STUDY_ROOT_FIND)
            if context is None:
                await assoc.abort()
                raise RuntimeError(f"{name} refused Study Root C-FIND: {answer}")
            opened[name] = (assoc, context)
        names = list(endpoints)
        for query in queries[:10]:  # warm-up, not measured
            for name in names:
                await _find(*opened[name], query)
        measured: dict[str, tuple[list[float], dict[str, list[float]], int]] = {
            name: ([], {}, 0) for name in names
        }
        for i, query in enumerate(queries):
            for name in names if i % 2 == 0 else names[::-1]:
                seconds, right = await _find(*opened[name], query)
                latencies, by_kind, correct = measured[name]
                latencies.append(seconds)
                by_kind.setdefault(query.kind, []).append(seconds)
                measured[name] = (latencies, by_kind, correct + int(right))
        return measured
    finally:
        for assoc, _ in opened.values():
            await assoc.release()


def measure_find(endpoints: dict[str, tuple[int, str]], queries: Sequence[Query]) -> dict[str, Any]:
    """Every query to every target over one association each (the project's asyncio client:
    TCP_NODELAY, no polling), alternating which target goes first."""
    measured = asyncio.run(_measure_find(endpoints, queries))
    result: dict[str, Any] = {}
    for name, (latencies, by_kind, correct) in measured.items():
        ms = [s * 1000 for s in latencies]
        result[name] = {
            "p50_ms": round(percentile(ms, 0.5), 2),
            "p99_ms": round(percentile(ms, 0.99), 2),
            "mean_ms": round(statistics.fmean(ms), 2),
            "p50_ms_by_kind": {
                k: round(percentile([s * 1000 for s in v], 0.5), 2)
                for k, v in sorted(by_kind.items())
            },
            "answers_matching_ground_truth": correct,
        }
    return result


def run_find(
    work: Path,
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    count: int,
    query_count: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any]:
    root = work / "find"
    started = time.perf_counter()
    data = write_find_index(root, count, seed, ingested_share=0.02)
    sample = dcmread(next(iter(sorted(data["dirs"][0].iterdir()))))
    assert sample.StudyDate and sample.PatientName, "generated file does not parse"
    all_studies: list[FindStudy] = [*data["ingested"], *data["bulk"]]
    print(f"find: {count} studies written in {time.perf_counter() - started:.0f}s", flush=True)
    orthanc.start(root / "orthanc")
    load_orthanc = run_parallel([orthanc.store([d]) for d in data["dirs"]])
    held = orthanc.counts()
    if held["studies"] != count:
        raise RuntimeError(f"Orthanc holds {held} studies, expected {count}")
    print(f"find: Orthanc loaded in {load_orthanc:.0f}s", flush=True)
    pacsguard.start(root / "pacsguard")
    load_pacsguard = run_timed(pacsguard.store_plain([data["dirs"][0]]))
    pacsguard.stop()
    settings = load_settings(pacsguard.data_dir / "pacsguard.toml")
    bulk_started = time.perf_counter()
    indexed = bulk_insert(settings.storage.index_url, index_key(settings), data["bulk"])
    bulk_seconds = time.perf_counter() - bulk_started
    if indexed != count:
        raise RuntimeError(f"pacsguard's index holds {indexed} studies, expected {count}")
    pacsguard.start(pacsguard.data_dir, fresh=False)
    print(f"find: pacsguard loaded ({len(data['ingested'])} by storescu)", flush=True)
    for d in data["dirs"]:
        shutil.rmtree(d)
    queries = make_queries(all_studies, query_count, seed)
    try:
        measured = measure_find(
            {"pacsguard": (pacsguard.plain_port, OUR_AET), "Orthanc": (orthanc.port, ORTHANC_AET)},
            queries,
        )
    finally:
        pacsguard.stop()
        orthanc.stop()
    notes.append(
        f"C-FIND index: {len(data['ingested'])} studies reached pacsguard through storescu "
        f"({len(data['ingested']) / load_pacsguard:.0f}/s); the other {len(data['bulk'])} were "
        f"written into its SQLite index in one transaction ({bulk_seconds:.0f}s), row for row as "
        "SqlIndex.add writes them, without blobs (C-FIND reads only the index): at that rate "
        f"storescu would have needed ~{count / (len(data['ingested']) / load_pacsguard) / 60:.0f} "
        f"min. Orthanc received all {count} by 4 storescu in parallel ({load_orthanc:.0f}s). "
        'Orthanc keeps its default "StorageAccessOnFind": "Always"; every requested key is '
        "in its database, and pacsguard's find_result_cap (1000) is above every answer's size."
    )
    sizes = [len(q.expected) for q in queries]
    ratio = measured["pacsguard"]["p50_ms"] / measured["Orthanc"]["p50_ms"]
    return {
        "studies": count,
        "patients": len({s.patient_id for s in all_studies}),
        "queries": len(queries),
        "queries_per_kind": {
            k: sum(q.kind == k for q in queries) for k in sorted({q.kind for q in queries})
        },
        "matches_per_query": {
            "min": min(sizes),
            "median": statistics.median(sizes),
            "max": max(sizes),
        },
        "client": "pacsguard.dicom.client, one association per target, targets alternating",
        "targets": measured,
        "p50_ratio_pacsguard_over_orthanc": round(ratio, 3),
        "p99_ratio_pacsguard_over_orthanc": round(
            measured["pacsguard"]["p99_ms"] / measured["Orthanc"]["p99_ms"], 3
        ),
    }
