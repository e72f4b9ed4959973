"""A PostgreSQL index off this machine without verified TLS is warned about at start."""

from __future__ import annotations

import pytest

from pacsguard.archive.app import index_transport_warning


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:secret@db.example.org/pacs",
        "postgresql+psycopg://u:secret@db.example.org/pacs?sslmode=require",
        "postgresql+psycopg://u:secret@10.1.2.3:5432/pacs?sslmode=prefer",
        "postgresql+psycopg://u@/pacs?host=db.example.org",
    ],
)
def test_unverified_remote_servers_are_warned_about_without_the_password(url: str) -> None:
    warning = index_transport_warning(url)
    assert warning is not None and "sslmode=verify-full" in warning
    assert "secret" not in warning and "u:" not in warning


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///data/index.sqlite3",
        "postgresql+psycopg://u:secret@127.0.0.1:5432/pacs",
        "postgresql+psycopg://u:secret@localhost/pacs",
        "postgresql+psycopg://u@/pacs",  # Unix socket, libpq's default
        "postgresql+psycopg://u@/pacs?host=/var/run/postgresql",
        "postgresql+psycopg://u:secret@db.example.org/pacs?sslmode=verify-full",
        "postgresql+psycopg://u:secret@db.example.org/pacs?sslmode=verify-ca&sslrootcert=ca.crt",
    ],
)
def test_local_or_verified_connections_are_not(url: str) -> None:
    assert index_transport_warning(url) is None
