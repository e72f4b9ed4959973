"""History store fixtures: the archive suite's real PostgreSQL server, and a URL per back end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.archive.conftest import (  # noqa: F401  (fixtures, re-exported)
    PostgresDatabase,
    postgres_database,
    postgres_server,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty history database on each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite'}"
    database: PostgresDatabase = request.getfixturevalue("postgres_database")
    database.reset()
    return database.url
