"""Initial index schema: patients, studies, series, instances.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the schema's types: a revision must not change when schema.py does.
TEXT = sa.String().with_variant(sa.String(collation="C"), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _text(name: str) -> sa.Column[str]:
    return sa.Column(name, TEXT, nullable=False, server_default="")


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", ID, nullable=False),
        sa.Column("patient_id", TEXT, nullable=False),
        _text("patient_name"),
        _text("patient_name_key"),
        _text("patient_birth_date"),
        _text("patient_sex"),
        sa.PrimaryKeyConstraint("id", name="pk_patients"),
        sa.UniqueConstraint("patient_id", name="uq_patients_patient_id"),
    )
    op.create_index("ix_patients_patient_name_key", "patients", ["patient_name_key"])
    op.create_table(
        "studies",
        sa.Column("id", ID, nullable=False),
        sa.Column("study_instance_uid", TEXT, nullable=False),
        sa.Column("patient_fk", ID, nullable=False),
        _text("study_date"),
        _text("study_time"),
        _text("study_id"),
        _text("study_description"),
        _text("accession_number"),
        _text("referring_physician_name"),
        _text("referring_physician_name_key"),
        sa.PrimaryKeyConstraint("id", name="pk_studies"),
        sa.UniqueConstraint("study_instance_uid", name="uq_studies_study_instance_uid"),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name="fk_studies_patient_fk_patients"
        ),
    )
    op.create_index("ix_studies_patient_fk", "studies", ["patient_fk"])
    op.create_index("ix_studies_study_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession_number", "studies", ["accession_number"])
    op.create_table(
        "series",
        sa.Column("id", ID, nullable=False),
        sa.Column("series_instance_uid", TEXT, nullable=False),
        sa.Column("study_fk", ID, nullable=False),
        _text("modality"),
        _text("series_number"),
        _text("series_description"),
        sa.PrimaryKeyConstraint("id", name="pk_series"),
        sa.UniqueConstraint("series_instance_uid", name="uq_series_series_instance_uid"),
        sa.ForeignKeyConstraint(["study_fk"], ["studies.id"], name="fk_series_study_fk_studies"),
    )
    op.create_index("ix_series_study_fk_modality", "series", ["study_fk", "modality"])
    op.create_index("ix_series_modality", "series", ["modality"])
    op.create_table(
        "instances",
        sa.Column("id", ID, nullable=False),
        sa.Column("sop_instance_uid", TEXT, nullable=False),
        sa.Column("series_fk", ID, nullable=False),
        _text("sop_class_uid"),
        _text("instance_number"),
        _text("transfer_syntax_uid"),
        _text("blob_key"),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        _text("sha256"),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
        sa.UniqueConstraint("sop_instance_uid", name="uq_instances_sop_instance_uid"),
        sa.ForeignKeyConstraint(["series_fk"], ["series.id"], name="fk_instances_series_fk_series"),
    )
    op.create_index("ix_instances_series_fk", "instances", ["series_fk"])


def downgrade() -> None:
    for table in ("instances", "series", "studies", "patients"):
        op.drop_table(table)
