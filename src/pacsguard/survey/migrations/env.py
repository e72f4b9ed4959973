"""Alembic environment of the history store: runs on the connection `migrate` hands over.

Its version table is `pacsguard_history_version`, so the history store never reads or moves
the archive index's revision even when both live in one PostgreSQL database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pacsguard.survey.schema import VERSION_TABLE, metadata

if context.is_offline_mode():
    raise RuntimeError("pacsguard history migrations run online only, through HistoryStore")
connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "pacsguard history migrations need a connection in config.attributes['connection']; "
        "open the store with pacsguard.survey.store.HistoryStore(url) instead"
    )
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
