"""The index's hottest write on raw driver connections: one instance into a known series.

Through SQLAlchemy, that single-statement transaction cost 0.34 ms of Python per instance
(pool checkout and return, events, result objects, the reset on return); the statement itself
takes 0.08 ms. `DriverInsert` runs the same compiled statement, with the same connection
settings, on a few DBAPI connections of its own. It only ever answers "inserted" or "not
here": a duplicate, a busy database or any driver error makes the caller take the general
SQLAlchemy path, which has the retries and the error handling.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Insert
from sqlalchemy.engine import Engine

from pacsguard.archive.model import AddOutcome, InstanceRecord

#: Raw connections kept; more concurrent writers than this take the general path.
MAX_CONNECTIONS: Final = 8


def instance_values(record: InstanceRecord, series_fk: int) -> dict[str, object]:
    """The `instances` row of `record` in the series `series_fk`: what both insert paths bind."""
    return {
        "sop_instance_uid": record.sop_instance_uid,
        "series_fk": series_fk,
        "sop_class_uid": record.sop_class_uid,
        "instance_number": record.instance_number.strip(),
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "blob_key": record.blob_key,
        "size": record.size,
        "sha256": record.sha256,
    }


#: The columns the statement is compiled for: the keys of any row, here an empty one's.
_COLUMNS: Final = tuple(instance_values(InstanceRecord("", "", "", "", ""), 0))


class DriverInsert:
    """`insert(record, series_fk, notify)` on a pooled driver connection, or None."""

    def __init__(
        self,
        engine: Engine,
        statement: Insert,
        on_connect: Callable[[Any, Any], None] | None,
    ) -> None:
        dialect = engine.dialect
        self._sqlite = dialect.name == "sqlite"
        compiled = statement.compile(dialect=dialect, column_keys=list(_COLUMNS))
        self._sql = compiled.string
        self._order = tuple(compiled.positiontup or ()) if compiled.positional else None
        cargs, cparams = dialect.create_connect_args(engine.url)
        if self._sqlite:
            cparams = {**cparams, "check_same_thread": False}
        self._connect_args = (tuple(cargs), dict(cparams))
        self._dialect = dialect
        self._on_connect = on_connect
        self._error: type[Exception] = dialect.loaded_dbapi.Error
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._open = 0
        self._closed = False

    def _take(self) -> Any | None:
        with self._lock:
            if self._closed:
                return None
            if self._idle:
                return self._idle.pop()
            if self._open >= MAX_CONNECTIONS:
                return None
            self._open += 1
        try:
            cargs, cparams = self._connect_args
            connection = self._dialect.connect(*cargs, **cparams)
            if self._on_connect is not None:
                self._on_connect(connection, None)
            return connection
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def _give(self, connection: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
        connection.close()

    def _discard(self, connection: Any) -> None:
        with self._lock:
            self._open -= 1
        with contextlib.suppress(self._error):
            connection.close()

    def insert(
        self,
        record: InstanceRecord,
        series_fk: int,
        notify: Callable[[AddOutcome], None],
    ) -> AddOutcome | None:
        """Insert `record` into the series `series_fk` and commit (same durability as the
        engine's connections); `notify` runs before the commit. None when the row was not
        inserted (a duplicate, a conflict, a driver error): nothing was committed then, and
        the caller takes the general path."""
        try:
            connection = self._take()
        except self._error:
            return None
        if connection is None:
            return None
        values = instance_values(record, series_fk)
        params: Any = values if self._order is None else [values[k] for k in self._order]
        try:
            cursor = connection.cursor()
            try:
                if self._sqlite:  # the driver is in autocommit mode: begin as a writer
                    cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(self._sql, params)
                inserted = cursor.fetchone() is not None
            finally:
                cursor.close()
            if not inserted:
                connection.rollback()
                self._give(connection)
                return None
            notify(AddOutcome.INSERTED)
            connection.commit()
        except self._error:
            self._discard(connection)  # its transaction, if any, goes with it
            return None
        except BaseException:
            self._discard(connection)
            raise
        self._give(connection)
        return AddOutcome.INSERTED

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(self._error):
                connection.close()
