"""The lab's C-FIND engine: light per-level rows and DICOM attribute matching (PS3.4 C.2.2.2).

Pure: a query goes in as a pydicom Dataset and comes out as a status and response identifiers.
Rows hold plain strings (a farm of a thousand hosts cannot afford a Dataset per instance), and
each row points at its parent, so a SERIES row also answers for its study and patient.

Matching follows PS3.4 C.2.2.2: universal (empty or `*`), single value, `*`/`?` wildcards,
UID lists, multiple values separated by backslashes, and ranges for dates and times. Person
names match case-insensitively, as Orthanc and dcm4chee do by default. Keys below the query
level are returned empty and never matched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Final

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsguard.dicom.levels import Level, QueryRoot
from pacsguard.lab.synth import SyntheticArchive

STATUS_SUCCESS: Final = 0x0000
STATUS_PENDING: Final = 0xFF00
#: Identifier does not match SOP Class (PS3.4 C.4.1.1.4): bad or missing QueryRetrieveLevel.
STATUS_IDENTIFIER_MISMATCH: Final = 0xA900
#: Unable to process: the identifier could not be decoded.
STATUS_UNABLE_TO_PROCESS: Final = 0xC000


class Kind(StrEnum):
    """How an attribute is matched."""

    TEXT = "text"  # single value, wildcards, lists
    NAME = "name"  # like TEXT, case-insensitive
    DATE = "date"  # single value or range
    UID = "uid"  # single value or UID list; no wildcards
    NUMBER = "number"  # compared as integers
    COUNT = "count"  # Number Of ... Related ...: return key only, never matched


@dataclass(frozen=True, slots=True)
class Attribute:
    level: Level
    kind: Kind


#: Every attribute the lab knows, at the level that holds it.
ATTRIBUTES: Final[Mapping[str, Attribute]] = {
    "PatientName": Attribute(Level.PATIENT, Kind.NAME),
    "PatientID": Attribute(Level.PATIENT, Kind.TEXT),
    "PatientBirthDate": Attribute(Level.PATIENT, Kind.DATE),
    "PatientSex": Attribute(Level.PATIENT, Kind.TEXT),
    "NumberOfPatientRelatedStudies": Attribute(Level.PATIENT, Kind.COUNT),
    "NumberOfPatientRelatedSeries": Attribute(Level.PATIENT, Kind.COUNT),
    "NumberOfPatientRelatedInstances": Attribute(Level.PATIENT, Kind.COUNT),
    "StudyInstanceUID": Attribute(Level.STUDY, Kind.UID),
    "StudyDate": Attribute(Level.STUDY, Kind.DATE),
    "StudyTime": Attribute(Level.STUDY, Kind.DATE),
    "StudyID": Attribute(Level.STUDY, Kind.TEXT),
    "AccessionNumber": Attribute(Level.STUDY, Kind.TEXT),
    "ReferringPhysicianName": Attribute(Level.STUDY, Kind.NAME),
    "StudyDescription": Attribute(Level.STUDY, Kind.TEXT),
    "InstitutionName": Attribute(Level.STUDY, Kind.TEXT),
    "ModalitiesInStudy": Attribute(Level.STUDY, Kind.TEXT),
    "NumberOfStudyRelatedSeries": Attribute(Level.STUDY, Kind.COUNT),
    "NumberOfStudyRelatedInstances": Attribute(Level.STUDY, Kind.COUNT),
    "SeriesInstanceUID": Attribute(Level.SERIES, Kind.UID),
    "SeriesNumber": Attribute(Level.SERIES, Kind.NUMBER),
    "Modality": Attribute(Level.SERIES, Kind.TEXT),
    "NumberOfSeriesRelatedInstances": Attribute(Level.SERIES, Kind.COUNT),
    "SOPInstanceUID": Attribute(Level.IMAGE, Kind.UID),
    "SOPClassUID": Attribute(Level.IMAGE, Kind.UID),
    "InstanceNumber": Attribute(Level.IMAGE, Kind.NUMBER),
}

Value = str | tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Row:
    """One entity (patient, study, series or instance) with its own values and its parent."""

    level: Level
    values: Mapping[str, Value]
    parent: Row | None = None

    def get(self, keyword: str) -> Value | None:
        row: Row | None = self
        while row is not None:
            if keyword in row.values:
                return row.values[keyword]
            row = row.parent
        return None


@dataclass(frozen=True, slots=True)
class HostData:
    """The rows of one host's archive, by level."""

    rows: Mapping[Level, tuple[Row, ...]]

    @classmethod
    def empty(cls) -> HostData:
        return cls({level: () for level in Level})

    @classmethod
    def from_archive(cls, archive: SyntheticArchive) -> HostData:
        """Flatten an archive into rows; the archive itself can be dropped afterwards."""
        rows: dict[Level, list[Row]] = {level: [] for level in Level}
        for patient in archive.patients:
            p_series = sum(len(st.series) for st in patient.studies)
            p_instances = sum(st.instance_count for st in patient.studies)
            p_row = Row(
                Level.PATIENT,
                {
                    "PatientName": patient.name,
                    "PatientID": patient.patient_id,
                    "PatientBirthDate": patient.birth_date,
                    "PatientSex": patient.sex,
                    "NumberOfPatientRelatedStudies": str(len(patient.studies)),
                    "NumberOfPatientRelatedSeries": str(p_series),
                    "NumberOfPatientRelatedInstances": str(p_instances),
                },
            )
            rows[Level.PATIENT].append(p_row)
            for study in patient.studies:
                st_row = Row(
                    Level.STUDY,
                    {
                        "StudyInstanceUID": study.study_instance_uid,
                        "StudyDate": study.study_date,
                        "StudyTime": study.study_time,
                        "StudyID": study.study_id,
                        "AccessionNumber": study.accession_number,
                        "ReferringPhysicianName": study.referring_physician,
                        "StudyDescription": study.description,
                        "InstitutionName": study.institution,
                        "ModalitiesInStudy": tuple(sorted({se.modality for se in study.series})),
                        "NumberOfStudyRelatedSeries": str(len(study.series)),
                        "NumberOfStudyRelatedInstances": str(study.instance_count),
                    },
                    p_row,
                )
                rows[Level.STUDY].append(st_row)
                for series in study.series:
                    se_row = Row(
                        Level.SERIES,
                        {
                            "SeriesInstanceUID": series.series_instance_uid,
                            "SeriesNumber": str(series.series_number),
                            "Modality": series.modality,
                            "NumberOfSeriesRelatedInstances": str(len(series.instances)),
                        },
                        st_row,
                    )
                    rows[Level.SERIES].append(se_row)
                    rows[Level.IMAGE].extend(
                        Row(
                            Level.IMAGE,
                            {
                                "SOPInstanceUID": inst.sop_instance_uid,
                                "SOPClassUID": inst.sop_class_uid,
                                "InstanceNumber": str(inst.instance_number),
                            },
                            se_row,
                        )
                        for inst in series.instances
                    )
        return cls({level: tuple(r) for level, r in rows.items()})


# -- matching --------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _match_date(query: str, value: str) -> bool:
    """DA/TM single value or range (`A-B`, `-B`, `A-`), compared at the query's precision."""
    value = value.replace(":", "")
    if "-" not in query:
        return value[: len(query)] == query if query else True
    low, _, high = query.partition("-")
    low, high = low.strip().replace(":", ""), high.strip().replace(":", "")
    if low and value[: len(low)] < low:
        return False
    return not (high and value[: len(high)] > high)


def _match_one(kind: Kind, query: str, value: str) -> bool:
    if kind is Kind.DATE:
        return _match_date(query, value)
    if kind is Kind.NUMBER:
        try:
            return int(query) == int(value)
        except ValueError:
            return query == value
    if kind is Kind.UID:
        return query == value
    ignore_case = kind is Kind.NAME
    if "*" in query or "?" in query:
        return _wildcard(query, ignore_case).fullmatch(value) is not None
    return query.casefold() == value.casefold() if ignore_case else query == value


def matches(kind: Kind, query: str, value: Value | None) -> bool:
    """Whether one attribute value matches one query value (PS3.4 C.2.2.2)."""
    query = query.strip()
    if kind is Kind.COUNT or query in ("", "*"):
        return True  # universal matching
    if value is None:
        return False
    values = value if isinstance(value, tuple) else (value,)
    alternatives = query.split("\\")
    return any(_match_one(kind, q.strip(), v.strip()) for q in alternatives for v in values)


# -- queries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FindResult:
    """What a C-FIND answers: pending identifiers, then a final status."""

    status: int
    identifiers: tuple[Dataset, ...] = ()
    error_comment: str | None = None


_LEVELS_BY_NAME: Final = {level.name: level for level in Level}


def query_level(root: QueryRoot, identifier: Dataset) -> Level | None:
    """The identifier's QueryRetrieveLevel if valid for `root` (Study Root has no PATIENT)."""
    raw = identifier.get("QueryRetrieveLevel")
    name = str(raw or "").strip().upper()
    level = _LEVELS_BY_NAME.get(name)
    if level is None or (root is QueryRoot.STUDY and level is Level.PATIENT):
        return None
    return level


def _query_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def find(
    data: HostData, root: QueryRoot, identifier: Dataset, *, counts: bool = True
) -> FindResult:
    """Run one C-FIND over `data`; `counts=False` leaves the count attributes out (dcmqrscp)."""
    level = query_level(root, identifier)
    if level is None:
        return FindResult(
            STATUS_IDENTIFIER_MISMATCH, error_comment="invalid or missing QueryRetrieveLevel"
        )
    keys: list[tuple[str, Attribute, str]] = []
    for element in identifier:
        keyword = element.keyword
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.level > level:
            continue
        text = _query_text(element.value)
        if attribute.kind is not Kind.COUNT and text.strip() not in ("", "*"):
            keys.append((keyword, attribute, text))
    identifiers = tuple(
        _response(identifier, level, row, counts)
        for row in data.rows[level]
        if all(matches(attribute.kind, text, row.get(kw)) for kw, attribute, text in keys)
    )
    return FindResult(STATUS_SUCCESS, identifiers)


def _response(request: Dataset, level: Level, row: Row, counts: bool) -> Dataset:
    """Only the requested keys, with the row's values; unknown keys come back empty."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level.name
    for element in request:
        if element.tag.element == 0 or element.keyword == "QueryRetrieveLevel":
            continue
        attribute = ATTRIBUTES.get(element.keyword)
        if attribute is not None and attribute.kind is Kind.COUNT and not counts:
            continue
        value = row.get(element.keyword) if attribute and attribute.level <= level else None
        vr = _vr(element.tag, element.VR)
        if vr == "SQ":
            ds.add_new(element.tag, vr, [])
        else:
            ds.add_new(element.tag, vr, list(value) if isinstance(value, tuple) else value)
    return ds


def _vr(tag: int, received: str) -> str:
    keyword = keyword_for_tag(tag)
    if keyword:
        vr = dictionary_VR(tag)
        if "or" not in vr:
            return vr
    return received if received and received != "UN" else "UN"
