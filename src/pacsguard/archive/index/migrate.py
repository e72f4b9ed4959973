"""Apply the index's Alembic migrations from code: no alembic.ini, no command line.

`upgrade_to_head` runs inside the caller's transaction. On PostgreSQL it first takes a
transaction-scoped advisory lock, so two archive processes opening one fresh database do not
both try to create the tables; on SQLite the caller's `BEGIN IMMEDIATE` does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

MIGRATIONS: Final = Path(__file__).with_name("migrations")
#: pg_advisory_xact_lock key for schema migrations ("pacsg" in ASCII).
_LOCK_KEY: Final = 0x7061637367


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code, bound to `connection` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision this version of pacsguard knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty database."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(connection: Connection) -> None:
    """Bring the database to the newest revision, in the caller's transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    if current_revision(connection) == head_revision():
        return
    command.upgrade(alembic_config(connection), "head")
