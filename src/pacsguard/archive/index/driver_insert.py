"""The index's hottest write on raw driver connections: one instance into a known series.

Through SQLAlchemy, that single-statement transaction cost 0.34 ms of Python per instance
(pool checkout and return, events, result objects, the reset on return); the statement itself
takes 0.08 ms. `DriverInsert` runs the same compiled statement, with the same connection
settings, on a few DBAPI connections of its own. It only ever answers "inserted" or "not
here": a duplicate, a busy database or any driver error makes the caller take the general
SQLAlchemy path, which has the retries and the error handling.

Concurrent inserts are committed in groups (`DriverInsert.insert`): with several associations
storing at once, one transaction and one WAL sync take every row that arrived while the
previous commit ran, instead of one sync per row each behind the other (SQLite runs one
writer at a time, and a writer keeps its lock while the WAL syncs). Each caller still returns
only after its own row is committed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Insert
from sqlalchemy.engine import Engine

from pacsguard.archive.model import AddOutcome, InstanceRecord

#: Raw connections kept; more concurrent writers than this take the general path.
MAX_CONNECTIONS: Final = 8
#: Rows committed together at most (group commit across associations).
MAX_GROUP: Final = 64


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


@dataclass(slots=True)
class _Pending:
    """One caller's row, waiting for a group commit."""

    record: InstanceRecord
    series_fk: int
    notify: Callable[[AddOutcome], None]
    done: bool = False
    outcome: AddOutcome | None = None
    error: BaseException | None = None

    def answer(self) -> AddOutcome | None:
        if self.error is not None:
            raise self.error
        return self.outcome


class DriverInsert:
    """`insert(record, series_fk, notify)` on a pooled driver connection, or None."""

    def __init__(
        self,
        engine: Engine,
        statement: Insert,
        on_connect: Callable[[Any, Any], None] | None,
        writer_lock: contextlib.AbstractContextManager[object] | None = None,
    ) -> None:
        """`writer_lock`: held around each transaction (`sql.WriterLock`, with processes
        that share the index)."""
        self._writer_lock = writer_lock or contextlib.nullcontext()
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
        self._group = threading.Condition()
        self._queue: list[_Pending] = []
        self._committing = False

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
        the caller takes the general path. `notify`'s exception is raised, its row not
        committed.

        Group commit: the rows of concurrent callers share one transaction and one sync. The
        first caller to find no commit under way commits every row queued by then (its own
        included) and wakes the others; a caller arriving meanwhile waits for that commit to
        end, then finds its row committed, or commits the next group itself."""
        pending = _Pending(record, series_fk, notify)
        with self._group:
            self._queue.append(pending)
            while self._committing and not pending.done:
                self._group.wait()
            if pending.done:
                return pending.answer()
            self._committing = True
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        try:
            with self._writer_lock:
                self._commit_group(group)
        finally:
            with self._group:
                for one in group:
                    one.done = True
                self._committing = False
                self._group.notify_all()
        return pending.answer()

    def _commit_group(self, group: list[_Pending]) -> None:
        """One transaction for `group`: each row inside its own savepoint, so that one row's
        duplicate or failing `notify` takes back that row only; then one commit. Sets each
        pending row's outcome (None: the caller takes the general path) or error."""
        try:
            connection = self._take()
        except self._error:
            return
        if connection is None:
            return
        try:
            cursor = connection.cursor()
            try:
                if self._sqlite:  # the driver is in autocommit mode: begin as a writer
                    cursor.execute("BEGIN IMMEDIATE")
                for one in group:
                    self._insert_one(cursor, one)
            finally:
                cursor.close()
            if any(one.outcome is AddOutcome.INSERTED for one in group):
                connection.commit()
            else:
                connection.rollback()
        except self._error:
            self._discard(connection)  # its transaction, if any, goes with it
            for one in group:
                one.outcome = None  # nothing committed: the general path retries
            return
        except BaseException as error:
            self._discard(connection)
            for one in group:
                one.outcome, one.error = None, error
            raise
        self._give(connection)

    def _insert_one(self, cursor: Any, one: _Pending) -> None:
        values = instance_values(one.record, one.series_fk)
        params: Any = values if self._order is None else [values[k] for k in self._order]
        cursor.execute("SAVEPOINT pacsguard_row")
        try:
            cursor.execute(self._sql, params)
            inserted = cursor.fetchone() is not None
            if inserted:
                one.notify(AddOutcome.INSERTED)
        except self._error:
            cursor.execute("ROLLBACK TO SAVEPOINT pacsguard_row")
            inserted = False
        except Exception as error:  # notify refused (the audit log): this row only
            cursor.execute("ROLLBACK TO SAVEPOINT pacsguard_row")
            cursor.execute("RELEASE SAVEPOINT pacsguard_row")
            one.error = error
            return
        if not inserted:
            cursor.execute("ROLLBACK TO SAVEPOINT pacsguard_row")
        cursor.execute("RELEASE SAVEPOINT pacsguard_row")
        one.outcome = AddOutcome.INSERTED if inserted else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(self._error):
                connection.close()
