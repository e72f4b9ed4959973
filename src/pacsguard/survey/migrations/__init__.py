"""Alembic migrations of the history store; `pacsguard.survey.migrate` applies them."""
