"""Alembic environment: runs on the connection `pacsguard.archive.index.migrate` hands over.

There is no alembic.ini and no URL here: the index opens its own engine and passes a
connection already inside a transaction, so a migration commits or rolls back with it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pacsguard.archive.index.schema import metadata

if context.is_offline_mode():
    raise RuntimeError("pacsguard index migrations run online only, through SqlIndex")
connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "pacsguard index migrations need a connection in config.attributes['connection']; "
        "open the index with pacsguard.archive.index.sql.SqlIndex(url) instead"
    )
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
