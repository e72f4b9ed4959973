"""`out_of_space` tells an index that ran out of room (the store answers 0xA700) from one that
failed otherwise (0x0110), on the exceptions the real drivers raise."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import psycopg.errors
import pytest
import sqlalchemy as sa

from pacsguard.archive.index import out_of_space, sqlcipher


def _fill(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x BLOB)")
        for _ in range(100):
            connection.exec_driver_sql("INSERT INTO t VALUES (randomblob(4000))")


def test_a_full_sqlite_index_is_out_of_space(tmp_path: Path) -> None:
    """SQLITE_FULL for real: the database may not grow past eight pages."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'full.db'}", module=sqlcipher.dbapi())

    @sa.event.listens_for(engine, "connect")
    def small(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.execute("PRAGMA max_page_count = 8")

    with pytest.raises(sa.exc.OperationalError) as raised:
        _fill(engine)
    engine.dispose()
    assert out_of_space(raised.value)


def test_a_locked_or_missing_sqlite_index_is_not_out_of_space(tmp_path: Path) -> None:
    missing = sa.create_engine(
        f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}", module=sqlcipher.dbapi()
    )
    with pytest.raises(sa.exc.OperationalError) as raised:
        _fill(missing)
    assert not out_of_space(raised.value)
    path = tmp_path / "locked.db"
    holder = sa.create_engine(f"sqlite:///{path}", module=sqlcipher.dbapi())
    other = sa.create_engine(
        f"sqlite:///{path}", module=sqlcipher.dbapi(), connect_args={"timeout": 0.0}
    )
    with holder.begin() as held:
        held.exec_driver_sql("CREATE TABLE t (x BLOB)")
    with holder.connect() as held:
        held.exec_driver_sql("BEGIN EXCLUSIVE")
        with pytest.raises(sa.exc.OperationalError) as locked:
            _fill(other)
        held.exec_driver_sql("ROLLBACK")
    holder.dispose()
    other.dispose()
    assert "locked" in str(locked.value.orig)
    assert not out_of_space(locked.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (psycopg.errors.DiskFull(), True),  # SQLSTATE 53100
        (psycopg.errors.TooManyConnections(), True),  # 53300: insufficient resources too
        (psycopg.errors.AdminShutdown(), False),  # 57P01: the server went away
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), False),
        (RuntimeError("anything else"), False),
    ],
)
def test_what_counts_as_out_of_space(error: BaseException, expected: bool) -> None:
    assert out_of_space(error) is expected
    try:  # and the same wrapped, as SQLAlchemy and `raise ... from` do
        raise RuntimeError("wrapper") from error
    except RuntimeError as wrapped:
        assert out_of_space(wrapped) is expected
