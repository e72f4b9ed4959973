"""The index's tables: patients, studies, series, instances, each pointing at its parent.

This module is the schema the code queries; the Alembic revisions in `migrations/versions`
create it, and a contract test checks that the two agree. Text columns compare bytewise on
both back ends (PostgreSQL columns use the "C" collation, SQLite's default is BINARY), so
range and prefix conditions use the indexes and behave the same everywhere.

Person names are also kept in a `*_key` column, case-folded by `matching.normalize_name`:
PN matching is case-insensitive (as Orthanc and dcm4chee do by default) without a function
index that would differ between back ends.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.types import TypeEngine

#: Bytewise text: VARCHAR COLLATE "C" on PostgreSQL, plain (BINARY) on SQLite.
TEXT: Final[TypeEngine[str]] = String().with_variant(String(collation="C"), "postgresql")
#: Surrogate keys: BIGINT on PostgreSQL; INTEGER on SQLite, where only that is a rowid alias.
ID: Final[TypeEngine[int]] = BigInteger().with_variant(Integer(), "sqlite")

NAMING: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


def _text(name: str) -> Column[str]:
    return Column(name, TEXT, nullable=False, server_default="")


patients = Table(
    "patients",
    metadata,
    Column("id", ID, primary_key=True),
    Column("patient_id", TEXT, nullable=False, unique=True),
    _text("patient_name"),
    _text("patient_name_key"),
    _text("patient_birth_date"),
    _text("patient_sex"),
    Index("ix_patients_patient_name_key", "patient_name_key"),
)

studies = Table(
    "studies",
    metadata,
    Column("id", ID, primary_key=True),
    Column("study_instance_uid", TEXT, nullable=False, unique=True),
    Column("patient_fk", ID, ForeignKey("patients.id"), nullable=False),
    _text("study_date"),
    _text("study_time"),
    _text("study_id"),
    _text("study_description"),
    _text("accession_number"),
    _text("referring_physician_name"),
    _text("referring_physician_name_key"),
    Index("ix_studies_patient_fk", "patient_fk"),
    Index("ix_studies_study_date", "study_date"),
    Index("ix_studies_accession_number", "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("id", ID, primary_key=True),
    Column("series_instance_uid", TEXT, nullable=False, unique=True),
    Column("study_fk", ID, ForeignKey("studies.id"), nullable=False),
    _text("modality"),
    _text("series_number"),
    _text("series_description"),
    # (study_fk, modality): the series of a study, and ModalitiesInStudy, from the index alone.
    Index("ix_series_study_fk_modality", "study_fk", "modality"),
    Index("ix_series_modality", "modality"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", ID, primary_key=True),
    Column("sop_instance_uid", TEXT, nullable=False, unique=True),
    Column("series_fk", ID, ForeignKey("series.id"), nullable=False),
    _text("sop_class_uid"),
    _text("instance_number"),
    _text("transfer_syntax_uid"),
    _text("blob_key"),
    Column("size", BigInteger, nullable=False, server_default="0"),
    _text("sha256"),
    Index("ix_instances_series_fk", "series_fk"),
)
