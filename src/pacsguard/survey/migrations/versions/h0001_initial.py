"""Initial history store: survey_runs and survey_hosts.

Revision ID: h0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "h0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the schema's types: a revision must not change when schema.py does.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "survey_runs",
        sa.Column("id", ID, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_run", ID, nullable=True),
        sa.Column("source", sa.Text, nullable=False, server_default=""),
        sa.Column("scope", sa.Text, nullable=False, server_default="{}"),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("tool_version", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.String(32), nullable=True),
        sa.Column("records", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reachable", sa.Integer, nullable=False, server_default="0"),
        sa.Column("dicom", sa.Integer, nullable=False, server_default="0"),
        sa.Column("exposed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("studies", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("instances", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_survey_runs"),
        sa.ForeignKeyConstraint(
            ["parent_run"], ["survey_runs.id"], name="fk_survey_runs_parent_run_survey_runs"
        ),
    )
    op.create_table(
        "survey_hosts",
        sa.Column("id", ID, nullable=False, autoincrement=True),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("country", sa.String(64), nullable=False, server_default="unknown"),
        sa.Column("asn", sa.BigInteger, nullable=True),
        sa.Column("as_org", sa.Text, nullable=True),
        sa.Column("exposed", sa.Boolean, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_survey_hosts"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["survey_runs.id"], name="fk_survey_hosts_run_id_survey_runs"
        ),
    )
    op.create_index("ix_survey_hosts_run_id_host", "survey_hosts", ["run_id", "host", "port"])


def downgrade() -> None:
    op.drop_index("ix_survey_hosts_run_id_host", table_name="survey_hosts")
    op.drop_table("survey_hosts")
    op.drop_table("survey_runs")
