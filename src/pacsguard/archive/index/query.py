"""The query engine C-FIND and QIDO-RS share: a `QueryRequest` becomes one SQL statement.

The statement selects from the query level's table joined to its ancestors, so keys of the
levels above (patient keys at STUDY level in Study Root, say) are matched and returned too.
Count attributes and ModalitiesInStudy are correlated subqueries over the indexed parent
keys, evaluated only for the rows returned (at most `limit`), which keeps a STUDY query with
counts fast on a large index.

Keys this index does not hold (InstitutionName...) and keys below the query level are
returned empty and never matched: PS3.4 C.2.2.1.3 lets an SCP treat unsupported optional keys
so. The unique keys of the query level and of the levels above it (within the root) are always
returned, whether asked for or not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from sqlalchemy import Select, Table, func, select
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause, Subquery

from pacsguard.archive.index import matching
from pacsguard.archive.index.matching import Kind
from pacsguard.archive.index.schema import instances, patients, series, studies
from pacsguard.archive.model import QueryError, QueryRequest
from pacsguard.dicom.levels import Level, QueryRoot

TABLES: Final[Mapping[Level, Table]] = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}
#: The column of each level's table that points at the parent level's `id`.
PARENT_FK: Final[Mapping[Level, str]] = {
    Level.STUDY: "patient_fk",
    Level.SERIES: "study_fk",
    Level.IMAGE: "series_fk",
}
UNIQUE_KEYS: Final[Mapping[Level, str]] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True, slots=True)
class Field:
    """A stored attribute: its level, how it is matched, its column (and its matching
    column when that differs: the case-folded copy of a person name)."""

    level: Level
    kind: Kind
    column: str
    match_column: str | None = None


FIELDS: Final[Mapping[str, Field]] = {
    "PatientID": Field(Level.PATIENT, Kind.TEXT, "patient_id"),
    "PatientName": Field(Level.PATIENT, Kind.NAME, "patient_name", "patient_name_key"),
    "PatientBirthDate": Field(Level.PATIENT, Kind.DATE, "patient_birth_date"),
    "PatientSex": Field(Level.PATIENT, Kind.TEXT, "patient_sex"),
    "StudyInstanceUID": Field(Level.STUDY, Kind.UID, "study_instance_uid"),
    "StudyDate": Field(Level.STUDY, Kind.DATE, "study_date"),
    "StudyTime": Field(Level.STUDY, Kind.TIME, "study_time"),
    "StudyID": Field(Level.STUDY, Kind.TEXT, "study_id"),
    "AccessionNumber": Field(Level.STUDY, Kind.TEXT, "accession_number"),
    "ReferringPhysicianName": Field(
        Level.STUDY, Kind.NAME, "referring_physician_name", "referring_physician_name_key"
    ),
    "StudyDescription": Field(Level.STUDY, Kind.TEXT, "study_description"),
    "SeriesInstanceUID": Field(Level.SERIES, Kind.UID, "series_instance_uid"),
    "Modality": Field(Level.SERIES, Kind.TEXT, "modality"),
    "SeriesNumber": Field(Level.SERIES, Kind.NUMBER, "series_number"),
    "SeriesDescription": Field(Level.SERIES, Kind.TEXT, "series_description"),
    "SOPInstanceUID": Field(Level.IMAGE, Kind.UID, "sop_instance_uid"),
    "SOPClassUID": Field(Level.IMAGE, Kind.UID, "sop_class_uid"),
    "InstanceNumber": Field(Level.IMAGE, Kind.NUMBER, "instance_number"),
}

#: Count attributes: (the level of the entity counted for, the level of what is counted).
COUNTS: Final[Mapping[str, tuple[Level, Level]]] = {
    "NumberOfPatientRelatedStudies": (Level.PATIENT, Level.STUDY),
    "NumberOfPatientRelatedSeries": (Level.PATIENT, Level.SERIES),
    "NumberOfPatientRelatedInstances": (Level.PATIENT, Level.IMAGE),
    "NumberOfStudyRelatedSeries": (Level.STUDY, Level.SERIES),
    "NumberOfStudyRelatedInstances": (Level.STUDY, Level.IMAGE),
    "NumberOfSeriesRelatedInstances": (Level.SERIES, Level.IMAGE),
}
MODALITIES: Final = "ModalitiesInStudy"
_SEPARATOR: Final = "\\"


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled query: the statement, and how to turn each row into a response."""

    statement: Select[Any]
    #: Response keywords in order, with the label of their column (None: always empty).
    outputs: tuple[tuple[str, str | None], ...]
    level: Level

    def response(self, row: Row[Any]) -> dict[str, str]:
        mapping = row._mapping
        out: dict[str, str] = {}
        for keyword, label in self.outputs:
            if keyword == "QueryRetrieveLevel":
                out[keyword] = self.level.name
            elif label is None:
                out[keyword] = ""
            elif keyword == MODALITIES:
                out[keyword] = _modalities(mapping[label])
            else:
                value = mapping[label]
                out[keyword] = "" if value is None else str(value)
        return out


def _modalities(aggregated: object) -> str:
    parts = str(aggregated or "").split(_SEPARATOR)
    return _SEPARATOR.join(sorted({part for part in parts if part}))


def levels_of(root: QueryRoot, level: Level) -> range:
    """The levels a query at `level` under `root` spans, top first (Study Root: no PATIENT)."""
    top = Level.PATIENT if root is QueryRoot.PATIENT else Level.STUDY
    return range(top, level + 1)


def plan(request: QueryRequest, dialect: str) -> Plan:
    """Compile `request` for `dialect` ("sqlite" or "postgresql"). Raises QueryError.

    Two steps in one statement: an inner page selects the matching entities (`limit` of them
    after skipping `offset`, with the ids of their ancestors); the outer query computes counts
    and ModalitiesInStudy for that page only, never for every match.

    The order is stable (`_order`): by the level's row id, which is the order entities were
    first stored in. Unlike the level's UID, it puts entities stored later after every page
    already read, so paging with offset/limit while the archive ingests neither skips nor
    repeats a match; and it is the primary key, which both databases read in order without
    a sort when nothing else narrows the query. A STUDY query matching a StudyDate range is
    ordered by StudyDate first (then row id): the order its date index is read in, so that a
    capped page of a wide range stops after `limit` rows instead of sorting every match
    (measured: benchmarks/archive/find_order.py).
    """
    level = request.level
    if request.root is QueryRoot.STUDY and level is Level.PATIENT:
        raise QueryError("the Study Root information model has no PATIENT level")
    if request.limit < 1:
        raise QueryError(f"limit must be at least 1, not {request.limit}")
    if request.offset < 0:
        raise QueryError(f"offset must not be negative, not {request.offset}")
    base = TABLES[level]
    source: FromClause = base
    for upper in range(level - 1, Level.PATIENT - 1, -1):
        child = TABLES[Level(upper + 1)]
        source = source.join(
            TABLES[Level(upper)], child.c[PARENT_FK[Level(upper + 1)]] == TABLES[Level(upper)].c.id
        )

    columns: list[ColumnElement[Any]] = [
        TABLES[Level(lv)].c.id.label(f"id{lv}") for lv in range(Level.PATIENT, level + 1)
    ]
    aggregates: list[tuple[str, Callable[[Subquery], ColumnElement[Any]]]] = []
    where: list[ColumnElement[bool]] = []
    outputs: list[tuple[str, str | None]] = []
    by_date = False

    def output(keyword: str, expression: ColumnElement[Any] | None) -> None:
        label = f"k{len(outputs)}"
        outputs.append((keyword, None if expression is None else label))
        if expression is not None:
            columns.append(expression.label(label))

    def aggregate(keyword: str, build: Callable[[Subquery], ColumnElement[Any]]) -> None:
        label = f"k{len(outputs)}"
        outputs.append((keyword, label))
        aggregates.append((label, build))

    wanted = dict(request.keys)
    for upper in levels_of(request.root, level):
        wanted.setdefault(UNIQUE_KEYS[Level(upper)], "")
    for keyword, raw in wanted.items():
        field = FIELDS.get(keyword)
        if field is not None:
            if field.level > level:
                output(keyword, None)
                continue
            table = TABLES[field.level]
            output(keyword, table.c[field.column])
            terms = matching.parse(keyword, field.kind, raw)
            if terms is not None:
                column = table.c[field.match_column or field.column]
                where.append(matching.condition(column, terms, dialect))
                by_date |= keyword == "StudyDate" and level is Level.STUDY
        elif keyword in COUNTS and COUNTS[keyword][0] <= level:
            owner, counted = COUNTS[keyword]
            aggregate(keyword, partial(_count_on_page, owner, counted))
        elif keyword == MODALITIES and level >= Level.STUDY:
            aggregate(keyword, _modalities_on_page)
            terms = matching.parse(keyword, Kind.TEXT, raw)
            if terms is not None:
                where.append(_has_modality(terms, dialect))
        else:
            output(keyword, None)  # QueryRetrieveLevel, an unknown key, a key below the level

    order = _order(level, by_date=by_date)
    columns.extend(column.label(f"o{n}") for n, column in enumerate(order))
    page = (
        select(*columns)
        .select_from(source)
        .where(*where)
        .order_by(*order)
        .offset(request.offset or None)
        .limit(request.limit)
        .subquery("page")
    )
    statement = select(page, *(build(page).label(label) for label, build in aggregates)).order_by(
        *(page.c[f"o{n}"] for n in range(len(order)))
    )
    return Plan(statement, tuple(outputs), level)


def _order(level: Level, *, by_date: bool) -> list[ColumnElement[Any]]:
    """The stable order of the matches at `level` (see `plan`)."""
    if by_date:
        return [studies.c.study_date, studies.c.id]
    return [TABLES[level].c.id]


def _count_on_page(owner: Level, counted: Level, page: Subquery) -> ColumnElement[int]:
    return _count(owner, counted, page.c[f"id{owner}"])


def _modalities_on_page(page: Subquery) -> ColumnElement[str]:
    return _modalities_of_study(page.c[f"id{Level.STUDY}"])


def _count(owner: Level, counted: Level, owner_id: ColumnElement[Any]) -> ColumnElement[int]:
    """How many entities at `counted` lie under the entity `owner_id` at `owner`."""
    aliases = {
        lv: TABLES[Level(lv)].alias(f"c_{Level(lv).name.lower()}")
        for lv in range(owner + 1, counted + 1)
    }
    source: FromClause = aliases[counted]
    for lv in range(counted - 1, owner, -1):
        source = source.join(
            aliases[lv], aliases[lv + 1].c[PARENT_FK[Level(lv + 1)]] == aliases[lv].c.id
        )
    top = aliases[owner + 1]
    return (
        select(func.count())
        .select_from(source)
        .where(top.c[PARENT_FK[Level(owner + 1)]] == owner_id)
        .scalar_subquery()
    )


def _modalities_of_study(study_id: ColumnElement[Any]) -> ColumnElement[str]:
    alias = series.alias("m_series")
    return (
        select(func.aggregate_strings(alias.c.modality, _SEPARATOR))
        .where(alias.c.study_fk == study_id)
        .scalar_subquery()
    )


def _has_modality(terms: tuple[matching.Term, ...], dialect: str) -> ColumnElement[bool]:
    alias = series.alias("q_series")
    return (
        select(alias.c.id)
        .where(
            alias.c.study_fk == studies.c.id, matching.condition(alias.c.modality, terms, dialect)
        )
        .correlate(studies)
        .exists()
    )
