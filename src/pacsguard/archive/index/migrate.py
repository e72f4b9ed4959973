"""The index's Alembic migration chain (`pacsguard._alembic` runs it from code)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy.engine import Connection

from pacsguard._alembic import MigrationChain

MIGRATIONS: Final = Path(__file__).with_name("migrations")
#: pg_advisory_xact_lock key for schema migrations ("pacsg" in ASCII).
CHAIN: Final = MigrationChain(MIGRATIONS, lock_key=0x7061637367)


def head_revision() -> str | None:
    """The newest revision this version of pacsguard knows."""
    return CHAIN.head_revision()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty database."""
    return CHAIN.current_revision(connection)


def upgrade_to_head(connection: Connection) -> None:
    """Bring the database to the newest revision, in the caller's transaction."""
    CHAIN.upgrade_to_head(connection)
