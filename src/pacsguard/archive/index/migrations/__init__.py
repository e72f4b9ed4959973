"""Alembic migrations of the index schema; `pacsguard.archive.index.migrate` applies them."""
