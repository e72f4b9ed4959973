"""Reading `InstanceRecord`s back: the four tables joined, one row per instance."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Final

from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from pacsguard.archive.index.schema import instances, patients, series, studies
from pacsguard.archive.model import InstanceRecord

#: instances -> series -> studies -> patients.
RECORD_SOURCE: Final[FromClause] = (
    instances.join(series, instances.c.series_fk == series.c.id)
    .join(studies, series.c.study_fk == studies.c.id)
    .join(patients, studies.c.patient_fk == patients.c.id)
)


def _column(name: str) -> ColumnElement[Any]:
    for table in (instances, series, studies, patients):
        if name in table.c:
            return table.c[name].label(name)
    raise LookupError(f"InstanceRecord.{name} has no column in the index schema")


#: One labelled column for each InstanceRecord field, in field order.
RECORD_COLUMNS: Final = tuple(_column(field.name) for field in fields(InstanceRecord))


def to_record(row: Row[Any]) -> InstanceRecord:
    return InstanceRecord(**row._mapping)
