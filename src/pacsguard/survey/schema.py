"""The history store's tables: one row per run, one row per host record of a run.

A run row holds what was asked (scope, options), by which pacsguard version, when, and the
counts once it ends; a host row holds the scan record itself (JSON, exactly as JSON Lines
carries it) plus the columns the survey commands select and group by. Records hold counts,
categories and redacted evidence only, so the store holds no patient value either.

This module is the schema the code queries; `migrations/versions` creates it, and a test checks
that the two agree. The store lives in its own database (or at least its own Alembic version
table, `pacsguard_history_version`): it is never mixed with the archive's index.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

ID: Final[TypeEngine[int]] = BigInteger().with_variant(Integer(), "sqlite")
VERSION_TABLE: Final = "pacsguard_history_version"

NAMING: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

runs = Table(
    "survey_runs",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # scan, import, recheck
    Column("parent_run", ID, ForeignKey("survey_runs.id"), nullable=True),
    Column("source", Text, nullable=False, server_default=""),
    Column("scope", Text, nullable=False, server_default="{}"),  # JSON
    Column("options", Text, nullable=False, server_default="{}"),  # JSON
    Column("tool_version", String(32), nullable=False),
    Column("started_at", String(32), nullable=False),  # ISO 8601, UTC
    Column("finished_at", String(32), nullable=True),  # NULL while running or interrupted
    Column("records", Integer, nullable=False, server_default="0"),
    Column("reachable", Integer, nullable=False, server_default="0"),
    Column("dicom", Integer, nullable=False, server_default="0"),
    Column("exposed", Integer, nullable=False, server_default="0"),
    Column("studies", BigInteger, nullable=False, server_default="0"),
    Column("instances", BigInteger, nullable=False, server_default="0"),
)

hosts = Table(
    "survey_hosts",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("run_id", ID, ForeignKey("survey_runs.id"), nullable=False),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("country", String(64), nullable=False, server_default="unknown"),
    Column("asn", BigInteger, nullable=True),
    Column("as_org", Text, nullable=True),
    Column("exposed", Boolean, nullable=False),
    Column("record", Text, nullable=False),  # the scan record, JSON
    Index("ix_survey_hosts_run_id_host", "run_id", "host", "port"),
)
