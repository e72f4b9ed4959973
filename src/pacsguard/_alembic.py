"""One way to run an Alembic migration chain from code (no alembic.ini, no command line).

The archive index and the scan history store each have their own chain (script location,
version table, advisory-lock key); this is the mechanism they share. `upgrade_to_head` runs in
the caller's transaction; on PostgreSQL it first takes a transaction-scoped advisory lock, so
two processes opening one fresh database do not both create the tables (on SQLite the caller's
`BEGIN IMMEDIATE` does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection


@dataclass(frozen=True, slots=True)
class MigrationChain:
    """A folder of Alembic revisions with its own version table and lock key."""

    location: Path
    #: pg_advisory_xact_lock key, distinct per chain.
    lock_key: int
    #: None: Alembic's default `alembic_version`.
    version_table: str | None = None

    def config(self, connection: Connection | None = None) -> Config:
        """An Alembic configuration built in code, bound to `connection` if given."""
        config = Config()
        config.set_main_option("script_location", str(self.location).replace("%", "%%"))
        config.set_main_option("path_separator", "os")
        if connection is not None:
            config.attributes["connection"] = connection
        return config

    def head_revision(self) -> str | None:
        """The newest revision this version of pacsguard knows."""
        return ScriptDirectory.from_config(self.config()).get_current_head()

    def current_revision(self, connection: Connection) -> str | None:
        """The revision the database is at; None for an empty database."""
        opts = {"version_table": self.version_table} if self.version_table else {}
        return MigrationContext.configure(connection, opts=opts).get_current_revision()

    def upgrade_to_head(self, connection: Connection) -> None:
        """Bring the database to the newest revision, in the caller's transaction."""
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.lock_key})
        if self.current_revision(connection) == self.head_revision():
            return
        command.upgrade(self.config(connection), "head")
