"""Apply the history store's Alembic migrations from code (no alembic.ini, no command line).

The same pattern as the archive index (`pacsguard.archive.index.migrate`), with its own
script location and version table: the two schemas never share a revision history.
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

from pacsguard.survey.schema import VERSION_TABLE

MIGRATIONS: Final = Path(__file__).with_name("migrations")
#: pg_advisory_xact_lock key for history migrations ("pgsur" in ASCII; the index uses "pacsg").
_LOCK_KEY: Final = 0x7067737572


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade_to_head(connection: Connection) -> None:
    """Bring the store to the newest revision, in the caller's transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    if current_revision(connection) == head_revision():
        return
    command.upgrade(alembic_config(connection), "head")
