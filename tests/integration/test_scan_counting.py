"""Counting against scripted servers: duplicates, count attributes, statuses, budgets, memory.

Each test starts a real SCP on a loopback port (`scripted_scp`) that answers C-FIND the way a
particular kind of server does, and runs the real probe against it.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import jsonschema
import pytest
from pydicom.dataset import Dataset

from pacsguard.dicom import uids
from pacsguard.dicom.client import Timeouts
from pacsguard.dicom.command import CommandField
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.scan.checks import assess
from pacsguard.scan.model import CountBudget, LowerBoundReason, Observations, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse

from .scripted_scp import LOOPBACK, FindAnswers, Peer, answering, scripted_scp

OPTIONS = ProbeOptions(timeouts=Timeouts(connect=5.0, read=10.0), total_timeout=60.0)
SUCCESS, PENDING, CANCEL, OUT_OF_RESOURCES = 0x0000, 0xFF00, 0xFE00, 0xA700


@dataclass(frozen=True)
class Row:
    """One synthetic instance: patient, study, series and SOP instance (UIDs under 2.25)."""

    patient: str
    study: str
    series: str
    sop: str


def archive(shape: list[list[int]]) -> list[Row]:
    """Rows for studies given as lists of series sizes, one patient per two studies."""
    rows = []
    for s, series_sizes in enumerate(shape):
        for r, size in enumerate(series_sizes):
            for i in range(size):
                rows.append(
                    Row(
                        f"PGTEST{s // 2}",
                        f"2.25.{s + 1}",
                        f"2.25.{s + 1}.{r + 1}",
                        f"2.25.{s + 1}.{r + 1}.{i + 1}",
                    )
                )
    return rows


SHAPE = [[3, 2], [1], [4, 4, 1], [2]]  # 4 studies, 7 series, 17 instances, 2 patients
ROWS = archive(SHAPE)


def per_instance(rows: list[Row], *, counts: bool) -> FindAnswers:
    """Answers one response per matching instance at every level, as pynetdicom's qrscp does;
    with `counts`, STUDY and PATIENT responses also carry the Number Of ... Related ... counts."""

    def find(query: Dataset) -> list[tuple[int, Dataset | None]]:
        level = query.QueryRetrieveLevel
        answers: list[tuple[int, Dataset | None]] = []
        for row in rows:
            if any(
                str(query.get(k, "") or "") not in ("", getattr(row, attr))
                for k, attr in (
                    ("PatientID", "patient"),
                    ("StudyInstanceUID", "study"),
                    ("SeriesInstanceUID", "series"),
                )
            ):
                continue
            ds = Dataset()
            ds.QueryRetrieveLevel = level
            ds.PatientID = row.patient
            if level == "PATIENT":
                if counts:
                    mine = [r for r in rows if r.patient == row.patient]
                    ds.NumberOfPatientRelatedStudies = len({r.study for r in mine})
                    ds.NumberOfPatientRelatedSeries = len({r.series for r in mine})
                    ds.NumberOfPatientRelatedInstances = len(mine)
                answers.append((PENDING, ds))
                continue
            ds.StudyInstanceUID = row.study
            if level in ("SERIES", "IMAGE"):
                ds.SeriesInstanceUID = row.series
            if level == "IMAGE":
                ds.SOPInstanceUID = row.sop
            if counts and level == "STUDY":
                in_study = [r for r in rows if r.study == row.study]
                ds.NumberOfStudyRelatedSeries = len({r.series for r in in_study})
                ds.NumberOfStudyRelatedInstances = len(in_study)
            answers.append((PENDING, ds))
        answers.append((SUCCESS, None))
        return answers

    return find


def probe(
    behaviour: Callable[[Peer], object],
    options: ProbeOptions = OPTIONS,
    *,
    refuse: tuple[str, ...] = (),
) -> Observations:
    async def go() -> Observations:
        async with scripted_scp(behaviour, refuse=refuse) as scp:  # type: ignore[arg-type]
            return await probe_dimse(Target(LOOPBACK, scp.port), options)

    return asyncio.run(go())


def counts(obs: Observations) -> tuple[int, int, int, int]:
    assert obs.exposure is not None, obs
    e = obs.exposure
    return e.patients, e.studies, e.series, e.instances


@pytest.mark.parametrize("with_counts", [False, True], ids=["no-count-attributes", "counts"])
def test_one_answer_per_instance_is_counted_once_per_uid(with_counts: bool) -> None:
    obs = probe(answering(per_instance(ROWS, counts=with_counts)))
    assert counts(obs) == (2, 4, 7, 17)
    assert obs.exposure is not None
    assert obs.exposure.lower_bound is False
    assert obs.exposure.lower_bound_reasons == ()
    assert obs.exposure.responses >= 17  # one per instance (and level): duplicates arrived
    if with_counts:
        assert obs.exposure.queries == 1
    else:  # 1 STUDY + 4 SERIES + 7 IMAGE queries, each study and series expanded once
        assert obs.exposure.queries == 1 + 4 + 7


@pytest.mark.parametrize("with_counts", [False, True], ids=["no-count-attributes", "counts"])
def test_patient_root_only_servers_are_counted_once_per_uid(with_counts: bool) -> None:
    obs = probe(answering(per_instance(ROWS, counts=with_counts)), refuse=(uids.STUDY_ROOT_FIND,))
    assert "study-root-find" not in obs.accepted_services
    assert counts(obs) == (2, 4, 7, 17)
    assert obs.exposure is not None
    assert obs.exposure.method == "patient-root"
    assert obs.exposure.lower_bound_reasons == ()
    # With counts: one PATIENT query. Without: 2 patients, 4 studies and 7 series expanded.
    assert obs.exposure.queries == (1 if with_counts else 1 + 2 + 4 + 7)


def test_the_schema_lists_every_lower_bound_reason() -> None:
    exposure = load_schema()["properties"]["exposure"]["oneOf"][1]["properties"]
    assert exposure["lower_bound_reasons"]["items"]["enum"] == [r.value for r in LowerBoundReason]


def test_count_attributes_that_contradict_the_answers_lose_to_them() -> None:
    honest = per_instance(ROWS, counts=False)

    def find(query: Dataset) -> list[tuple[int, Dataset | None]]:
        answers = honest(query)
        if query.QueryRetrieveLevel == "STUDY":
            for _, ds in answers:
                if ds is not None:  # claims only instances, and an impossible 0 series
                    ds.NumberOfStudyRelatedSeries = 0
                    ds.NumberOfStudyRelatedInstances = 99
        return answers

    obs = probe(answering(find))
    assert counts(obs) == (2, 4, 7, 17)
    assert obs.exposure is not None and obs.exposure.lower_bound is False
    assert any("disagree" in note for note in obs.exposure.notes)


@pytest.mark.parametrize(
    ("final", "reason"),
    [
        (OUT_OF_RESOURCES, LowerBoundReason.FAILURE_STATUS),
        (0xC001, LowerBoundReason.FAILURE_STATUS),
        (CANCEL, LowerBoundReason.CANCELLED),
    ],
)
def test_an_answer_that_does_not_end_in_success_gives_lower_bounds(
    final: int, reason: LowerBoundReason
) -> None:
    full = per_instance(ROWS, counts=True)

    def truncated(query: Dataset) -> list[tuple[int, Dataset | None]]:
        # e.g. a result limit reached after 6 responses: 5 for study 1 (once per instance)
        # and 1 for study 2
        return [*full(query)[:6], (final, None)]

    obs = probe(answering(truncated))
    record = to_record(assess(obs))
    jsonschema.validate(record, load_schema())
    assert record["exposure"]["lower_bound_reasons"] == [reason.value]
    assert obs.exposure is not None
    assert obs.exposure.lower_bound is True
    assert obs.exposure.lower_bound_reasons == (reason,)
    assert any(f"0x{final:04X}" in note for note in obs.exposure.notes)
    assert counts(obs) == (1, 2, 3, 6)
    assert obs.error is None


def test_a_failure_status_below_study_level_also_gives_lower_bounds() -> None:
    full = per_instance(ROWS, counts=False)

    def find(query: Dataset) -> list[tuple[int, Dataset | None]]:
        if query.QueryRetrieveLevel == "IMAGE" and query.SeriesInstanceUID == "2.25.3.2":
            return [(OUT_OF_RESOURCES, None)]
        return full(query)

    obs = probe(answering(find))
    assert obs.exposure is not None
    assert obs.exposure.lower_bound_reasons == (LowerBoundReason.FAILURE_STATUS,)
    assert counts(obs) == (2, 4, 7, 17 - 4)


def test_responses_without_uids_are_not_guessed_at() -> None:
    full = per_instance(ROWS, counts=True)

    def find(query: Dataset) -> list[tuple[int, Dataset | None]]:
        answers = full(query)
        stripped = Dataset()
        stripped.QueryRetrieveLevel = "STUDY"
        stripped.PatientID = "PGTEST9"
        return [(PENDING, stripped), *answers]

    obs = probe(answering(find))
    assert obs.exposure is not None
    assert obs.exposure.lower_bound_reasons == (LowerBoundReason.UNIDENTIFIED,)
    assert counts(obs)[1:] == (4, 7, 17)


def test_query_budget_leaves_the_association_clean_and_counts_lower_bounds() -> None:
    options = ProbeOptions(timeouts=OPTIONS.timeouts, budget=CountBudget(max_queries=3))
    peers: list[Peer] = []
    behave = answering(per_instance(ROWS, counts=False))

    async def watch(peer: Peer) -> None:
        peers.append(peer)
        await behave(peer)

    obs = probe(watch, options)
    assert obs.exposure is not None
    assert obs.exposure.lower_bound_reasons == (LowerBoundReason.QUERY_BUDGET,)
    assert obs.exposure.queries == 3
    assert obs.exposure.studies == 4
    assert [p.released for p in peers] == [True]  # no answer was cut: released, not aborted


def endless(distinct: bool) -> Callable[[Peer], object]:
    """Answers every C-FIND with pending responses until the requestor goes away; study UIDs
    all alike or all different. Responses are encoded once and patched (same length), and the
    server yields after each, as a remote server would not hog the test's event loop."""
    marker = b"2.25.1999999999"

    async def behave(peer: Peer) -> None:
        while (message := await peer.receive()) is not None:
            if message.field != CommandField.C_FIND_RQ:
                await peer.answer_echo(message)
                continue
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = "PGTEST0"
            ds.StudyInstanceUID = marker.decode()
            ds.NumberOfStudyRelatedSeries = 1
            ds.NumberOfStudyRelatedInstances = 1
            template = peer.find_response(message, PENDING, ds)
            n = 0
            try:
                while True:
                    n += 1
                    uid = f"2.25.1{n if distinct else 1:09d}".encode()
                    await peer.send(template.replace(marker, uid))
                    await asyncio.sleep(0)
            except (ConnectionError, RuntimeError):
                return

    return behave


def peak_memory(
    behaviour: Callable[[Peer], object], options: ProbeOptions
) -> tuple[int, Observations]:
    gc.collect()
    tracemalloc.start()
    try:
        obs = probe(behaviour, options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, obs


@pytest.mark.parametrize("distinct", [False, True], ids=["repeated", "distinct"])
def test_endless_answers_stop_at_the_response_budget_in_bounded_memory(distinct: bool) -> None:
    def options(responses: int) -> ProbeOptions:
        return ProbeOptions(timeouts=OPTIONS.timeouts, budget=CountBudget(max_responses=responses))

    probe(endless(distinct), options(50))  # warm up: pydicom builds its caches on first use
    peaks = {}
    for budget in (100, 700):
        peaks[budget], obs = peak_memory(endless(distinct), options(budget))
        assert obs.exposure is not None
        assert obs.exposure.lower_bound_reasons == (LowerBoundReason.RESPONSE_BUDGET,)
        assert obs.exposure.responses == budget
        assert obs.exposure.studies == (budget if distinct else 1)
    per_response = (peaks[700] - peaks[100]) / 600
    # Keeping each data set would cost about 2 KB per response; a digest and a claim per
    # distinct study cost under 300 bytes, a repeated study nothing.
    assert per_response < (400 if distinct else 50), peaks


def test_answers_carrying_pixel_data_are_an_anomaly_and_a_honeypot_hint() -> None:
    plain = per_instance(ROWS, counts=True)

    def with_pixels(query: Dataset) -> list[tuple[int, Dataset | None]]:
        answers = plain(query)
        for _status, ds in answers:
            if ds is not None:
                ds.add_new(0x7FE00010, "OW", b"\x00" * 64)  # a whole object handed out
        return answers

    obs = probe(answering(with_pixels))
    assert counts(obs) == (2, 4, 7, 17)  # still counted: the exposure is real either way
    assert "find-response-with-pixel-data" in obs.anomalies
    report = assess(obs)
    assert "find-pixel-data" in report.honeypot_signatures
    assert not report.honeypot_flagged  # one medium signature: a hint, not a flag
    assert any(f.id == "PG-HONEYPOT-HINT" for f in report.findings)
    assert "find-response-with-pixel-data" not in probe(answering(plain)).anomalies
