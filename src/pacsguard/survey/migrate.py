"""The history store's Alembic migration chain: its own script location, version table and
lock key, so it never shares a revision history with the archive index (which it may share a
PostgreSQL database with). `pacsguard._alembic` runs it from code."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy.engine import Connection

from pacsguard._alembic import MigrationChain
from pacsguard.survey.schema import VERSION_TABLE

MIGRATIONS: Final = Path(__file__).with_name("migrations")
#: pg_advisory_xact_lock key for history migrations ("pgsur" in ASCII; the index uses "pacsg").
CHAIN: Final = MigrationChain(MIGRATIONS, lock_key=0x7067737572, version_table=VERSION_TABLE)


def upgrade_to_head(connection: Connection) -> None:
    """Bring the store to the newest revision, in the caller's transaction."""
    CHAIN.upgrade_to_head(connection)
