"""Count what a C-FIND service exposes: patients, studies, series, instances, PHI categories.

Strategy (never retrieves pixel data, never keeps values):
1. One Study Root query at STUDY level asking for NumberOfStudyRelatedSeries/Instances (PS3.4
   C.3.4 optional keys) plus minimal keys to tell patients apart and detect PHI categories.
2. Studies whose counts did not come back are expanded at SERIES level (and series at IMAGE
   level), while the query budget lasts; what the budget cannot cover makes the counts lower
   bounds.
3. Without Study Root, Patient Root is used the same way starting at PATIENT level.

Patients are told apart by a keyed hash of PatientID (or name when ID is empty) with a key that
lives only in this process; study and series UIDs are held only while the probe runs, to address
the fallback queries.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from pydicom.dataset import Dataset

from pacsguard.dicom import uids
from pacsguard.dicom.phi import PHI_RETURN_KEYS, PhiCategory, categorize
from pacsguard.dicom.ul import AssociationAccepted, ContextResult
from pacsguard.errors import ProtocolError
from pacsguard.scan.model import Exposure

_HASH_KEY: Final = os.urandom(16)


class FindSession(Protocol):
    """What counting needs from an association: C-FIND on a negotiated context."""

    def find(
        self, context: ContextResult, identifier: Dataset
    ) -> AsyncIterator[tuple[int, Dataset | None]]: ...


@dataclass(frozen=True, slots=True)
class CountBudget:
    """Bounds on the work one target's counting may do."""

    max_queries: int = 64
    max_responses: int = 20000


class BudgetExhausted(Exception):
    """Internal: stop querying, what was counted is a lower bound."""


@dataclass
class _Tally:
    patients: set[bytes] = field(default_factory=set)
    studies: int = 0
    series: int = 0
    instances: int = 0
    categories: set[PhiCategory] = field(default_factory=set)
    queries: int = 0
    responses: int = 0
    lower_bound: bool = False
    notes: list[str] = field(default_factory=list)


def _patient_key(ds: Dataset) -> bytes | None:
    value = str(ds.get("PatientID", "") or "").strip() or str(ds.get("PatientName", "") or "")
    if not value.strip():
        return None
    return hashlib.blake2b(value.encode("utf-8", "replace"), key=_HASH_KEY, digest_size=8).digest()


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
    value = str(ds.get(keyword, "") or "").strip()
    return value if value and len(value) <= 64 else None


def _query(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class _Counter:
    def __init__(self, session: FindSession, budget: CountBudget) -> None:
        self._session = session
        self._budget = budget
        self.tally = _Tally()

    async def run(self, context: ContextResult, query: Dataset) -> list[Dataset]:
        """One C-FIND; returns the pending identifiers. Failure statuses are noted, not raised."""
        if self.tally.queries >= self._budget.max_queries:
            raise BudgetExhausted
        self.tally.queries += 1
        results: list[Dataset] = []
        async for status, ds in self._session.find(context, query):
            if status in (0xFF00, 0xFF01):
                self.tally.responses += 1
                if ds is not None:
                    self.tally.categories |= categorize(ds)
                    results.append(ds)
                if self.tally.responses >= self._budget.max_responses:
                    self.tally.lower_bound = True
                    self.tally.notes.append("response budget reached")
                    raise BudgetExhausted
            elif status != 0x0000:
                self.tally.notes.append(
                    f"C-FIND {query.QueryRetrieveLevel} answered status 0x{status:04X}"
                )
        return results

    async def count_series_instances(
        self, context: ContextResult, study_uid: str, patient_id: str | None
    ) -> None:
        keys: dict[str, str] = {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": "",
            "NumberOfSeriesRelatedInstances": "",
        }
        if patient_id is not None:
            keys["PatientID"] = patient_id
        series = await self.run(context, _query("SERIES", **keys))
        self.tally.series += len(series)
        for ds in series:
            count = _int(ds, "NumberOfSeriesRelatedInstances")
            if count is not None:
                self.tally.instances += count
                continue
            series_uid = _uid(ds, "SeriesInstanceUID")
            if series_uid is None:
                self.tally.lower_bound = True
                continue
            image_keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
            if patient_id is not None:
                image_keys["PatientID"] = patient_id
            images = await self.run(context, _query("IMAGE", SOPInstanceUID="", **image_keys))
            self.tally.instances += len(images)

    async def count_studies(self, context: ContextResult, patient_id: str | None = None) -> None:
        keys = {
            "StudyInstanceUID": "",
            "NumberOfStudyRelatedSeries": "",
            "NumberOfStudyRelatedInstances": "",
        }
        keys.update(dict.fromkeys(PHI_RETURN_KEYS, ""))
        if patient_id is not None:
            keys["PatientID"] = patient_id
        studies = await self.run(context, _query("STUDY", **keys))
        self.tally.studies += len(studies)
        pending: list[tuple[str, int | None]] = []  # studies lacking some count
        for ds in studies:
            key = _patient_key(ds)
            if key is not None:
                self.tally.patients.add(key)
            n_series = _int(ds, "NumberOfStudyRelatedSeries")
            n_instances = _int(ds, "NumberOfStudyRelatedInstances")
            if n_series is not None and n_instances is not None:
                self.tally.series += n_series
                self.tally.instances += n_instances
                continue
            study_uid = _uid(ds, "StudyInstanceUID")
            if study_uid is None:
                self.tally.lower_bound = True
                continue
            pending.append((study_uid, n_instances))
        if pending:
            self.tally.notes.append("count attributes missing: counted series/images")
        for study_uid, _ in pending:
            await self.count_series_instances(context, study_uid, patient_id)

    async def count_by_patient(self, context: ContextResult) -> None:
        keys = {
            "PatientID": "",
            "PatientName": "",
            "PatientBirthDate": "",
            "PatientSex": "",
            "NumberOfPatientRelatedStudies": "",
            "NumberOfPatientRelatedSeries": "",
            "NumberOfPatientRelatedInstances": "",
        }
        patients = await self.run(context, _query("PATIENT", **keys))
        for ds in patients:
            key = _patient_key(ds)
            if key is not None:
                self.tally.patients.add(key)
        expand: list[str] = []
        for ds in patients:
            studies = _int(ds, "NumberOfPatientRelatedStudies")
            series = _int(ds, "NumberOfPatientRelatedSeries")
            instances = _int(ds, "NumberOfPatientRelatedInstances")
            if studies is not None and series is not None and instances is not None:
                self.tally.studies += studies
                self.tally.series += series
                self.tally.instances += instances
                continue
            patient_id = str(ds.get("PatientID", "") or "").strip()
            if not patient_id:
                self.tally.lower_bound = True
                continue
            expand.append(patient_id)
        for patient_id in expand:
            await self.count_studies(context, patient_id)


async def count_exposure(
    session: FindSession, accepted: AssociationAccepted, budget: CountBudget
) -> tuple[Exposure, bool]:
    """Count what the negotiated query contexts expose; never raises for the remote's answers.

    Returns the exposure and whether the association is still in a clean state (False when a
    query was cut short: the caller must abort rather than release it).
    """
    counter = _Counter(session, budget)
    study_root = accepted.accepted_context(uids.STUDY_ROOT_FIND)
    patient_root = accepted.accepted_context(uids.PATIENT_ROOT_FIND)
    method = "none"
    clean = True
    try:
        if study_root is not None:
            method = "study-root"
            await counter.count_studies(study_root)
        elif patient_root is not None:
            method = "patient-root"
            await counter.count_by_patient(patient_root)
    except BudgetExhausted:
        counter.tally.lower_bound = True
        if "response budget reached" not in counter.tally.notes:
            counter.tally.notes.append("query budget reached")
        clean = False
    except (TimeoutError, ProtocolError) as exc:
        counter.tally.lower_bound = True
        counter.tally.notes.append(f"counting interrupted: {exc.__class__.__name__}")
        clean = False
    tally = counter.tally
    exposure = Exposure(
        patients=len(tally.patients),
        studies=tally.studies,
        series=tally.series,
        instances=tally.instances,
        lower_bound=tally.lower_bound,
        phi_categories=frozenset(tally.categories),
        method=method,
        queries=tally.queries,
        notes=tuple(tally.notes),
    )
    return exposure, clean
