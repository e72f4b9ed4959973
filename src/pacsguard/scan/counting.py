"""Count what a C-FIND service exposes: patients, studies, series, instances, PHI categories.

Strategy (never retrieves pixel data, never keeps a data set):
1. One Study Root query at STUDY level asking for NumberOfStudyRelatedSeries/Instances (PS3.4
   C.3.4 optional keys) plus minimal keys to tell patients apart and detect PHI categories.
2. Studies whose counts did not come back (or came back impossible: no instances) are expanded
   at SERIES level, and series likewise at IMAGE level, while the query budget lasts.
3. Without Study Root, Patient Root is used the same way starting at PATIENT level.

Every count is of *distinct* unique keys: pynetdicom's `qrscp`, for one, answers a STUDY-level
query with one response per instance. Count attributes are the server's claims; where answers
at the level below were received, the answers win (and a disagreement is noted).

Counts are exact only if every C-FIND they come from ended with Success. A failure or cancel
status (e.g. 0xA700 when a result limit is reached, 0xFE00), an interrupted answer, a budget
reached or a response without its unique key makes them lower bounds, with the reason
(`LowerBoundReason`).

Memory: each response is reduced as it arrives (PHI categories, then keyed 8-byte digests of its
UIDs) and dropped. What stays per target is a set of digests per level and the count claims of
distinct studies or patients, all bounded by the response budget, plus the UIDs still to expand,
bounded by the query budget; never a data set. Digests use a key that lives only in this
process, so they cannot be matched against anything outside it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final, Protocol

from pydicom.dataset import Dataset

from pacsguard.dicom import uids
from pacsguard.dicom.phi import PHI_RETURN_KEYS, PhiCategory, categorize
from pacsguard.dicom.ul import AssociationAccepted, ContextResult
from pacsguard.errors import ProtocolError
from pacsguard.scan.model import CountBudget, Exposure, LowerBoundReason

__all__ = ["CountBudget", "ExposureCounter", "FindSession", "count_exposure"]

_HASH_KEY: Final = os.urandom(16)
_PENDING: Final = (0xFF00, 0xFF01)
_SUCCESS: Final = 0x0000
_CANCEL: Final = 0xFE00


class FindSession(Protocol):
    """What counting needs from an association: C-FIND on a negotiated context."""

    def find(
        self, context: ContextResult, identifier: Dataset
    ) -> AsyncIterator[tuple[int, Dataset | None]]: ...


class BudgetExhausted(Exception):
    """Internal: stop querying, what was counted is a lower bound."""

    def __init__(self, reason: LowerBoundReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


#: (7FE0,0010) Pixel Data: never a query key.
_PIXEL_DATA: Final = 0x7FE00010


def _digest(value: str) -> bytes:
    return hashlib.blake2b(value.encode("utf-8", "replace"), key=_HASH_KEY, digest_size=8).digest()


def _text(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # a malformed element from a remote: treat as absent
        return ""


def _patient_key(ds: Dataset) -> bytes | None:
    value = _text(ds, "PatientID") or _text(ds, "PatientName")
    return _digest(value) if value else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or str(value).strip() == "":
            return None
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number >= 0 else None


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = _text(ds, keyword)
    return value if value and len(value) <= 64 else None


def _query(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _plausible(*counts: int) -> bool:
    """Counts down the hierarchy (e.g. studies, series, instances) that can all be true: at
    least one of each, and never fewer at a level than at the level above."""
    return counts[0] >= 1 and all(a <= b for a, b in pairwise(counts))


@dataclass
class _Tally:
    """What one target's counting has established so far; a snapshot is valid at any moment."""

    patients: set[bytes] = field(default_factory=set)
    studies: set[bytes] = field(default_factory=set)
    series: set[bytes] = field(default_factory=set)
    instances: set[bytes] = field(default_factory=set)
    #: Counts that count attributes claim below a distinct patient (studies, series,
    #: instances), study (series, instances) or series (instances), for the levels that were
    #: not queried because the claim was there.
    patient_claims: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    study_claims: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    series_claims: dict[bytes, int] = field(default_factory=dict)
    categories: set[PhiCategory] = field(default_factory=set)
    pixel_data: bool = False
    queries: int = 0
    responses: int = 0
    reasons: list[LowerBoundReason] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lower_bound(self, reason: LowerBoundReason, note: str | None = None) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
        if note is not None:
            self.note(note)

    def note(self, text: str) -> None:
        if text not in self.notes and len(self.notes) < 16:
            self.notes.append(text)


class ExposureCounter:
    """Counts one target's exposure over an association; `exposure()` may be read at any time
    (also after the probe's time budget cut `count` short)."""

    def __init__(self, budget: CountBudget | None = None) -> None:
        self._budget = budget or CountBudget()
        self._tally = _Tally()
        self.method = "none"
        #: `count` returned: whatever stopped it is already among the reasons (a cancellation
        #: from outside, e.g. the probe's time budget, leaves this False).
        self.finished = False

    def exposure(self, *, cut_short: LowerBoundReason | None = None) -> Exposure:
        """The counts so far; `cut_short` adds the reason the counting was stopped from outside."""
        t = self._tally
        reasons = list(t.reasons)
        if cut_short is not None and cut_short not in reasons:
            reasons.append(cut_short)
        return Exposure(
            patients=len(t.patients),
            studies=len(t.studies) + sum(c[0] for c in t.patient_claims.values()),
            series=len(t.series)
            + sum(c[1] for c in t.patient_claims.values())
            + sum(c[0] for c in t.study_claims.values()),
            instances=len(t.instances)
            + sum(c[2] for c in t.patient_claims.values())
            + sum(c[1] for c in t.study_claims.values())
            + sum(t.series_claims.values()),
            lower_bound=bool(reasons),
            phi_categories=frozenset(t.categories),
            method=self.method,
            queries=t.queries,
            notes=tuple(t.notes),
            lower_bound_reasons=tuple(reasons),
            responses=t.responses,
            pixel_data_in_answers=t.pixel_data,
        )

    async def count(self, session: FindSession, accepted: AssociationAccepted) -> bool:
        """Count what the negotiated query contexts expose; never raises for the remote's
        answers. Returns whether the association is still in a clean state (False when an
        answer was cut short: the caller must abort rather than release it)."""
        study_root = accepted.accepted_context(uids.STUDY_ROOT_FIND)
        patient_root = accepted.accepted_context(uids.PATIENT_ROOT_FIND)
        clean = True
        try:
            if study_root is not None:
                self.method = "study-root"
                await self._count_studies(session, study_root)
            elif patient_root is not None:
                self.method = "patient-root"
                await self._count_by_patient(session, patient_root)
        except BudgetExhausted as exc:
            self._tally.lower_bound(exc.reason)
            # Out of queries between two C-FINDs, the association is idle; out of responses,
            # an answer is still streaming in.
            clean = exc.reason is LowerBoundReason.QUERY_BUDGET
        except (TimeoutError, ProtocolError, OSError) as exc:
            self._tally.lower_bound(
                LowerBoundReason.INTERRUPTED, f"counting interrupted: {exc.__class__.__name__}"
            )
            clean = False
        self.finished = True
        return clean

    # --- one C-FIND -----------------------------------------------------------------------

    async def _find(
        self, session: FindSession, context: ContextResult, query: Dataset
    ) -> AsyncIterator[Dataset]:
        """One C-FIND: yield each pending identifier (its PHI categories already taken), then
        turn the final status into a lower-bound reason unless it is Success."""
        tally = self._tally
        if tally.queries >= self._budget.max_queries:
            raise BudgetExhausted(LowerBoundReason.QUERY_BUDGET)
        tally.queries += 1
        level = str(query.QueryRetrieveLevel)
        answers = session.find(context, query)
        try:
            async for status, ds in answers:
                if status in _PENDING:
                    tally.responses += 1
                    if tally.responses > self._budget.max_responses:
                        tally.responses -= 1
                        raise BudgetExhausted(LowerBoundReason.RESPONSE_BUDGET)
                    if status == 0xFF01:
                        tally.note("optional keys not supported (status 0xFF01)")
                    if ds is None:
                        tally.lower_bound(
                            LowerBoundReason.UNIDENTIFIED, f"undecodable {level} response"
                        )
                        continue
                    tally.categories |= categorize(ds)
                    tally.pixel_data |= _PIXEL_DATA in ds
                    yield ds
                elif status == _CANCEL:
                    tally.lower_bound(
                        LowerBoundReason.CANCELLED, f"C-FIND {level} ended with status 0xFE00"
                    )
                elif status != _SUCCESS:
                    tally.lower_bound(
                        LowerBoundReason.FAILURE_STATUS,
                        f"C-FIND {level} ended with status 0x{status:04X}",
                    )
        finally:
            if isinstance(answers, AsyncGenerator):
                await answers.aclose()  # the answer was cut short: stop its generator now

    def _room_to_expand(self, queued: int) -> bool:
        """Whether one more query can be queued; otherwise the counts become lower bounds."""
        if self._tally.queries + queued < self._budget.max_queries:
            return True
        self._tally.lower_bound(LowerBoundReason.QUERY_BUDGET)
        return False

    # --- levels ---------------------------------------------------------------------------

    async def _count_instances(
        self,
        session: FindSession,
        context: ContextResult,
        keys: dict[str, str],
    ) -> int:
        """IMAGE level under one series: distinct SOP Instance UIDs; returns how many were new."""
        tally = self._tally
        new = 0
        async for ds in self._find(session, context, _query("IMAGE", SOPInstanceUID="", **keys)):
            sop_uid = _uid(ds, "SOPInstanceUID")
            if sop_uid is None:
                tally.lower_bound(LowerBoundReason.UNIDENTIFIED, "IMAGE response without a UID")
                continue
            digest = _digest(sop_uid)
            if digest not in tally.instances:
                tally.instances.add(digest)
                new += 1
        return new

    async def _count_series(
        self,
        session: FindSession,
        context: ContextResult,
        study_uid: str,
        patient_id: str | None,
        claimed: tuple[int | None, int | None],
    ) -> None:
        """SERIES level under one study, then IMAGE level for series without a count."""
        tally = self._tally
        keys = {"StudyInstanceUID": study_uid}
        if patient_id is not None:
            keys["PatientID"] = patient_id
        series_seen = 0
        instances_claimed = 0
        expand: list[str] = []
        query = _query("SERIES", SeriesInstanceUID="", NumberOfSeriesRelatedInstances="", **keys)
        async for ds in self._find(session, context, query):
            series_uid = _uid(ds, "SeriesInstanceUID")
            if series_uid is None:
                tally.lower_bound(LowerBoundReason.UNIDENTIFIED, "SERIES response without a UID")
                continue
            digest = _digest(series_uid)
            if digest in tally.series:
                continue
            tally.series.add(digest)
            series_seen += 1
            count = _int(ds, "NumberOfSeriesRelatedInstances")
            if count is not None and _plausible(count):
                tally.series_claims[digest] = count
                instances_claimed += count
            elif self._room_to_expand(len(expand)):
                expand.append(series_uid)
        instances_seen = 0
        for series_uid in expand:
            instances_seen += await self._count_instances(
                session, context, {**keys, "SeriesInstanceUID": series_uid}
            )
        n_series, n_instances = claimed
        if (n_series is not None and n_series != series_seen) or (
            n_instances is not None and n_instances != instances_claimed + instances_seen
        ):
            tally.note("count attributes disagree with the answers below them: answers counted")

    async def _count_studies(
        self, session: FindSession, context: ContextResult, patient_id: str | None = None
    ) -> None:
        tally = self._tally
        keys = {
            "StudyInstanceUID": "",
            "NumberOfStudyRelatedSeries": "",
            "NumberOfStudyRelatedInstances": "",
        }
        keys.update(dict.fromkeys(PHI_RETURN_KEYS, ""))
        if patient_id is not None:
            keys["PatientID"] = patient_id
        expand: dict[bytes, tuple[str, int | None, int | None]] = {}
        async for ds in self._find(session, context, _query("STUDY", **keys)):
            patient = _patient_key(ds)
            if patient is not None:
                tally.patients.add(patient)
            study_uid = _uid(ds, "StudyInstanceUID")
            if study_uid is None:
                tally.lower_bound(LowerBoundReason.UNIDENTIFIED, "STUDY response without a UID")
                continue
            digest = _digest(study_uid)
            n_series = _int(ds, "NumberOfStudyRelatedSeries")
            n_instances = _int(ds, "NumberOfStudyRelatedInstances")
            if digest in tally.studies:
                self._reconcile_repeat(digest, n_series, n_instances)
                continue
            tally.studies.add(digest)
            if (
                n_series is not None
                and n_instances is not None
                and _plausible(n_series, n_instances)
            ):
                tally.study_claims[digest] = (n_series, n_instances)
            elif self._room_to_expand(len(expand)):
                expand[digest] = (study_uid, n_series, n_instances)
        if expand:
            tally.note("count attributes missing: counted series/images")
        for study_uid, n_series, n_instances in expand.values():
            await self._count_series(
                session, context, study_uid, patient_id, (n_series, n_instances)
            )

    def _reconcile_repeat(
        self, digest: bytes, n_series: int | None, n_instances: int | None
    ) -> None:
        """A study answered again (some servers answer once per instance): counted once; if
        its count attributes differ, the larger claim is kept and the difference noted."""
        claim = self._tally.study_claims.get(digest)
        if claim is None or n_series is None or n_instances is None:
            return
        if (n_series, n_instances) != claim:
            self._tally.note("one study answered with different count attributes: larger kept")
            self._tally.study_claims[digest] = (
                max(claim[0], n_series),
                max(claim[1], n_instances),
            )

    async def _count_by_patient(self, session: FindSession, context: ContextResult) -> None:
        tally = self._tally
        keys = {
            "PatientID": "",
            "PatientName": "",
            "PatientBirthDate": "",
            "PatientSex": "",
            "NumberOfPatientRelatedStudies": "",
            "NumberOfPatientRelatedSeries": "",
            "NumberOfPatientRelatedInstances": "",
        }
        expand: dict[bytes, str] = {}
        async for ds in self._find(session, context, _query("PATIENT", **keys)):
            patient = _patient_key(ds)
            patient_id = _text(ds, "PatientID")
            if patient is None or not patient_id:
                tally.lower_bound(LowerBoundReason.UNIDENTIFIED, "PATIENT response without an ID")
                continue
            if patient in tally.patients:
                continue
            tally.patients.add(patient)
            n_studies = _int(ds, "NumberOfPatientRelatedStudies")
            n_series = _int(ds, "NumberOfPatientRelatedSeries")
            n_instances = _int(ds, "NumberOfPatientRelatedInstances")
            if (
                n_studies is not None
                and n_series is not None
                and n_instances is not None
                and _plausible(n_studies, n_series, n_instances)
            ):
                tally.patient_claims[patient] = (n_studies, n_series, n_instances)
            elif self._room_to_expand(len(expand)):
                expand[patient] = patient_id
        for patient_id in expand.values():
            await self._count_studies(session, context, patient_id)


async def count_exposure(
    session: FindSession, accepted: AssociationAccepted, budget: CountBudget
) -> tuple[Exposure, bool]:
    """Count what the negotiated query contexts expose; never raises for the remote's answers.

    Returns the exposure and whether the association is still in a clean state (False when a
    query was cut short: the caller must abort rather than release it).
    """
    counter = ExposureCounter(budget)
    clean = await counter.count(session, accepted)
    return counter.exposure(), clean
