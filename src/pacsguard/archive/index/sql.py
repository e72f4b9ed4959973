"""`SqlIndex`: the IndexStore on SQLAlchemy 2, SQLite (WAL) by default or PostgreSQL.

Durability: every write is one transaction committed before the method returns; SQLite runs
with `journal_mode=WAL` and `synchronous=FULL`, so a commit survives a power cut.

Encryption at rest: given a key, the SQLite index is a SQLCipher database (see `sqlcipher`,
whose driver opens every SQLite index, keyed or not): its file and its WAL hold no clear
patient data, and an older unencrypted index is encrypted on open. A PostgreSQL index is the
database server's to protect (README: PostgreSQL).

Threads: one SqlIndex serves every association thread; each call takes its own pooled
connection. On SQLite a write transaction starts with `BEGIN IMMEDIATE`, so writers queue on
the busy timeout instead of failing to upgrade a read lock; readers run beside them (WAL).
On PostgreSQL, entities are created with `INSERT ... ON CONFLICT DO NOTHING`, so two threads
storing the first instances of one new study both succeed; a write that still hits a
transient conflict (serialization failure, deadlock, a row removed meanwhile) is retried.

Entities take their attributes from the first instance that creates them; later instances
do not rewrite them. An instance whose series belongs to another study, or whose study to
another patient, is refused with `HierarchyError` (an empty PatientID is a patient too).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import Table, bindparam, create_engine, delete, event, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError

from pacsguard.archive.index import query, sqlcipher
from pacsguard.archive.index.checkpoint import Checkpointer
from pacsguard.archive.index.driver_insert import DriverInsert, instance_values
from pacsguard.archive.index.matching import normalize_name
from pacsguard.archive.index.migrate import upgrade_to_head
from pacsguard.archive.index.records import RECORD_COLUMNS, RECORD_SOURCE, to_record
from pacsguard.archive.index.schema import instances, patients, series, studies
from pacsguard.archive.model import (
    AddOutcome,
    HierarchyError,
    InstanceRecord,
    QueryRequest,
    is_valid_uid,
)
from pacsguard.dicom.levels import Level
from pacsguard.errors import ConfigError

T = TypeVar("T")

#: How long a SQLite writer waits for another to commit before giving up.
BUSY_TIMEOUT_S: Final = 30.0
#: Attempts for one write when a transient conflict hits it.
WRITE_ATTEMPTS: Final = 5
#: SQLSTATEs worth a retry: serialization failure, deadlock detected.
_TRANSIENT_SQLSTATES: Final = frozenset({"40001", "40P01"})
_WRITE: Final = "pacsguard_write"
_BATCH: Final = 1000


#: Series remembered by the add fast path (bounded; oldest forgotten first).
_KNOWN_SERIES_MAX = 4096


def _ignore(_outcome: AddOutcome) -> None:
    return None


class _Duplicate(Exception):
    """Raised inside an `add` transaction to roll it back and answer a duplicate outcome."""

    def __init__(self, outcome: AddOutcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


class WriterLock:
    """An exclusive lock on a file, held around each write transaction when several
    processes write to one SQLite index. SQLite lets one writer in at a time and makes the
    others poll (its busy handler sleeps 1, 2, 5, 10... ms between tries); a writer blocked
    in flock is woken by the kernel the moment the lock is free. Re-entrant per thread."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._local = threading.local()

    def __enter__(self) -> WriterLock:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._local.depth = depth + 1
        return self

    def __exit__(self, *_exc: object) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class SqlIndex:
    """The index on a SQLAlchemy URL: `sqlite:///path/index.db` or
    `postgresql+psycopg://user:password@127.0.0.1:5432/db`. Migrates the schema on open.

    `key` (32 bytes) encrypts an SQLite index with SQLCipher; it is not used on PostgreSQL.
    Raises ConfigError when the SQLite file cannot be read with the key given (another key,
    an encrypted index opened without one, or not an index at all)."""

    def __init__(
        self,
        url: str,
        *,
        key: bytes | None = None,
        shared_writers: bool = False,
        background_checkpoints: bool = False,
    ) -> None:
        """`shared_writers`: other processes write to this SQLite index at the same time
        (worker processes): writers of all of them queue on one lock file (`WriterLock`).
        `background_checkpoints`: SQLite WAL checkpoints run in a thread of their own, never
        inside a commit (`checkpoint.Checkpointer`)."""
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.encrypted = self.dialect == "sqlite" and key is not None
        checkpoints = background_checkpoints and self.dialect == "sqlite"
        self._engine, self._on_connect = _open_engine(parsed, key, autocheckpoint=not checkpoints)
        self._writer: Engine = self._engine.execution_options(**{_WRITE: True})
        self._statements = _write_statements(self.dialect)
        database = parsed.database
        self._writer_lock: contextlib.AbstractContextManager[object] = (
            WriterLock(Path(f"{database}-writer.lock"))
            if shared_writers and self.dialect == "sqlite" and database
            else contextlib.nullcontext()
        )
        self._driver_insert = DriverInsert(
            self._engine,
            self._statements[instances.name].insert,
            self._on_connect,
            self._writer_lock,
        )
        # series UID -> (series row id, study UID, patient ID) of series this process wrote to:
        # the next instance of a known series is one INSERT instead of six statements.
        self._known_series: dict[str, tuple[int, str, str]] = {}
        self._known_lock = threading.Lock()
        self._checkpointer: Checkpointer | None = None
        try:
            with self._writer.begin() as conn:
                upgrade_to_head(conn)
            if checkpoints:
                self._checkpointer = Checkpointer(self._engine.raw_connection)
        except DatabaseError as exc:
            self._engine.dispose()
            if self.dialect != "sqlite" or "file is not a database" not in str(exc.orig):
                raise
            raise ConfigError(
                f"the index {parsed.database} cannot be read "
                + (
                    "with the key derived from storage.key_file: it was encrypted with another "
                    "key (restore that key file)"
                    if key is not None
                    else "without a key: it is encrypted (set storage.encrypt_at_rest = true "
                    "and storage.key_file to the key it was written with)"
                )
                + ", or it is not a pacsguard index"
            ) from None
        except BaseException:
            self._engine.dispose()
            raise

    # -- writes ----------------------------------------------------------------------------

    def add(
        self,
        record: InstanceRecord,
        *,
        before_commit: Callable[[AddOutcome], None] | None = None,
    ) -> AddOutcome:
        """Record an instance durably (committed before return); see the module docstring and
        `IndexStore.add`. A retried write may call `before_commit` again."""
        for name in ("sop_instance_uid", "series_instance_uid", "study_instance_uid"):
            value = getattr(record, name)
            if not is_valid_uid(value):
                raise ValueError(f"{name} {value!r} is not a valid UID")
        notify = before_commit or _ignore

        def insert_into(series_fk: int) -> Callable[[Connection], AddOutcome]:
            def work(conn: Connection) -> AddOutcome:
                outcome = self._insert_instance(conn, record, series_fk)
                notify(outcome)
                return outcome

            return work

        def add_all(conn: Connection) -> tuple[AddOutcome, int]:
            outcome, series_fk = self._add(conn, record)
            notify(outcome)
            return outcome, series_fk

        known = self._known_series.get(record.series_instance_uid)
        if known is not None and known[1:] == (record.study_instance_uid, record.patient_id):
            fast = self._driver_insert.insert(record, known[0], notify)
            if fast is not None:
                return fast
            try:
                return self._write(insert_into(known[0]))
            except _Duplicate as duplicate:
                return duplicate.outcome
            except IntegrityError:  # the series was removed meanwhile (another process)
                self._forget_series()
        try:
            outcome, series_fk = self._write(add_all)
        except _Duplicate as duplicate:
            return duplicate.outcome
        with self._known_lock:
            if len(self._known_series) >= _KNOWN_SERIES_MAX:
                self._known_series.pop(next(iter(self._known_series)))
            self._known_series[record.series_instance_uid] = (
                series_fk,
                record.study_instance_uid,
                record.patient_id,
            )
        return outcome

    def _forget_series(self) -> None:
        with self._known_lock:
            self._known_series.clear()

    def _add(self, conn: Connection, r: InstanceRecord) -> tuple[AddOutcome, int]:
        _raise_if_duplicate(conn, r)
        patient = self._ensure(
            conn,
            patients,
            r.patient_id,
            None,
            {
                "patient_name": r.patient_name,
                "patient_name_key": normalize_name(r.patient_name),
                "patient_birth_date": r.patient_birth_date,
                "patient_sex": r.patient_sex,
            },
        )
        study = self._ensure(
            conn,
            studies,
            r.study_instance_uid,
            ("patient_fk", patient),
            {
                "study_date": r.study_date,
                "study_time": r.study_time,
                "study_id": r.study_id,
                "study_description": r.study_description,
                "accession_number": r.accession_number,
                "referring_physician_name": r.referring_physician_name,
                "referring_physician_name_key": normalize_name(r.referring_physician_name),
            },
        )
        one_series = self._ensure(
            conn,
            series,
            r.series_instance_uid,
            ("study_fk", study),
            {
                "modality": r.modality,
                "series_number": r.series_number.strip(),
                "series_description": r.series_description,
            },
        )
        return self._insert_instance(conn, r, one_series), one_series

    def _insert_instance(self, conn: Connection, r: InstanceRecord, series_fk: int) -> AddOutcome:
        inserted = conn.execute(
            self._statements[instances.name].insert, instance_values(r, series_fk)
        ).first()
        if inserted is None:  # another thread stored it since our first look
            _raise_if_duplicate(conn, r)
        return AddOutcome.INSERTED

    def _ensure(
        self,
        conn: Connection,
        table: Table,
        uid: str,
        parent: tuple[str, int] | None,
        values: dict[str, object],
    ) -> int:
        """The id of the entity `uid`, created with `values` if new; checks its parent."""
        statements = self._statements[table.name]
        row = conn.execute(statements.lookup, {"uid": uid}).first()
        if row is None:
            fields = {statements.unique: uid, **values}
            if parent is not None:
                fields[parent[0]] = parent[1]
            conn.execute(statements.insert, fields)
            row = conn.execute(statements.lookup, {"uid": uid}).one()
        if parent is not None and row[1] != parent[1]:
            noun, owner = ("study", "patient") if table is studies else ("series", "study")
            raise HierarchyError(
                f"{noun} {uid} already belongs to another {owner}; instance refused"
            )
        return int(row[0])

    def remove(self, sop_instance_uid: str) -> None:
        """Forget an instance; a series, study or patient left empty goes with it."""
        self._forget_series()
        self._write(lambda conn: _remove(conn, sop_instance_uid))

    def _write(self, work: Callable[[Connection], T]) -> T:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self._writer_lock, self._writer.begin() as conn:
                    return work(conn)
            except (IntegrityError, OperationalError) as error:
                if attempt == WRITE_ATTEMPTS or not _transient(error):
                    raise
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reads -----------------------------------------------------------------------------

    def find(self, request: QueryRequest) -> Iterator[dict[str, str]]:
        """Matching entities at the request's level (see `query`); raises QueryError at once
        for a query it cannot run."""
        compiled = query.plan(request, self.dialect)
        with self._engine.connect() as conn:
            rows = conn.execute(compiled.statement).all()
        return iter([compiled.response(row) for row in rows])

    def instances(self, level: Level, uid: str) -> list[InstanceRecord]:
        """Every instance under the entity `uid` at `level` (patient ID at PATIENT level)."""
        key = {
            Level.PATIENT: patients.c.patient_id,
            Level.STUDY: studies.c.study_instance_uid,
            Level.SERIES: series.c.series_instance_uid,
            Level.IMAGE: instances.c.sop_instance_uid,
        }[level]
        statement = (
            select(*RECORD_COLUMNS)
            .select_from(RECORD_SOURCE)
            .where(key == uid)
            .order_by(studies.c.id, series.c.id, instances.c.id)
        )
        with self._engine.connect() as conn:
            return [to_record(row) for row in conn.execute(statement)]

    def stored_copy(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(sha256, blob_key) of a stored instance: the duplicate check's one-table lookup."""
        statement = select(instances.c.sha256, instances.c.blob_key).where(
            instances.c.sop_instance_uid == sop_instance_uid
        )
        with self._engine.connect() as conn:
            row = conn.execute(statement).first()
        return None if row is None else (str(row[0]), str(row[1]))

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        found = self.instances(Level.IMAGE, sop_instance_uid)
        return found[0] if found else None

    def all_blob_keys(self) -> Iterator[tuple[str, str, int]]:
        """(blob_key, sha256, size) of every instance, read in batches of short transactions."""
        last = 0
        while True:
            statement = (
                select(instances.c.id, instances.c.blob_key, instances.c.sha256, instances.c.size)
                .where(instances.c.id > last)
                .order_by(instances.c.id)
                .limit(_BATCH)
            )
            with self._engine.connect() as conn:
                rows = conn.execute(statement).all()
            for row in rows:
                yield str(row.blob_key), str(row.sha256), int(row.size)
            if len(rows) < _BATCH:
                return
            last = int(rows[-1].id)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._driver_insert.close()
        self._engine.dispose()
        if isinstance(self._writer_lock, WriterLock):
            self._writer_lock.close()


@dataclass(frozen=True, slots=True)
class _Statements:
    """One entity table's write statements, built once: SQLAlchemy then finds their compiled
    form in its cache by identity instead of rebuilding and hashing a new construct per call
    (that was half the cost of an insert)."""

    unique: str
    lookup: Any
    insert: Any


def _write_statements(dialect_name: str) -> dict[str, _Statements]:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    made: dict[str, _Statements] = {}
    for table, unique, parent in (
        (patients, "patient_id", None),
        (studies, "study_instance_uid", "patient_fk"),
        (series, "series_instance_uid", "study_fk"),
        (instances, "sop_instance_uid", "series_fk"),
    ):
        columns = [table.c.id] + ([table.c[parent]] if parent else [])
        insert = dialect.insert(table).on_conflict_do_nothing(index_elements=[unique])
        if table is instances:
            insert = insert.returning(instances.c.id)
        made[table.name] = _Statements(
            unique, select(*columns).where(table.c[unique] == bindparam("uid")), insert
        )
    return made


_DUPLICATE_LOOKUP: Final = select(instances.c.sha256).where(
    instances.c.sop_instance_uid == bindparam("uid")
)


def _raise_if_duplicate(conn: Connection, r: InstanceRecord) -> None:
    found = conn.execute(_DUPLICATE_LOOKUP, {"uid": r.sop_instance_uid}).first()
    if found is not None:
        same = found.sha256 == r.sha256
        raise _Duplicate(AddOutcome.DUPLICATE_IDENTICAL if same else AddOutcome.DUPLICATE_CONFLICT)


def _remove(conn: Connection, sop_instance_uid: str) -> None:
    found = conn.execute(
        select(
            instances.c.id,
            series.c.id.label("series"),
            studies.c.id.label("study"),
            patients.c.id.label("patient"),
        )
        .select_from(RECORD_SOURCE)
        .where(instances.c.sop_instance_uid == sop_instance_uid)
    ).first()
    if found is None:
        return
    conn.execute(delete(instances).where(instances.c.id == found.id))
    for table, ident, child, fk in (
        (series, found.series, instances, "series_fk"),
        (studies, found.study, series, "study_fk"),
        (patients, found.patient, studies, "patient_fk"),
    ):
        in_use = exists().where(child.c[fk] == ident)
        conn.execute(delete(table).where(table.c.id == ident, ~in_use))


def _transient(error: DBAPIError) -> bool:
    if isinstance(error, IntegrityError):
        return True  # a unique or foreign key race with another writer: try again
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate in _TRANSIENT_SQLSTATES or "database is locked" in str(error.orig)


def open_engine(url: str | URL, *, key: bytes | None = None) -> Engine:
    """An engine on the index database with the connection settings `SqlIndex` uses (WAL,
    durability, the SQLCipher key): for tools that write the index directly (benchmarks)."""
    return _open_engine(make_url(url), key)[0]


def _open_engine(
    url: URL, key: bytes | None, *, autocheckpoint: bool = True
) -> tuple[Engine, Callable[[Any, Any], None] | None]:
    """(engine, the setup each new driver connection gets) for an index URL. Statement
    parameters (patient names, IDs) never appear in an error's text, which the archive logs.
    `autocheckpoint` False: SQLite's commits never checkpoint (a `Checkpointer` does)."""
    dialect = url.get_backend_name()
    if dialect == "postgresql":
        return create_engine(url, pool_pre_ping=True, hide_parameters=True), None
    if dialect != "sqlite":
        raise ValueError(
            f"unsupported index database {url.drivername!r}: "
            "use sqlite:///path or postgresql+psycopg://..."
        )
    if url.database in (None, "", ":memory:"):
        raise ValueError(
            "an in-memory SQLite index cannot be shared between threads; "
            "give a file path: sqlite:///path/to/index.db"
        )
    path = Path(url.database)
    if key is not None:
        sqlcipher.check_key(key)
        if sqlcipher.is_plaintext(path):
            sqlcipher.encrypt_plaintext_index(path, key)
    _create_private(path)
    on_connect = _sqlite_setup(key, autocheckpoint)
    # One driver whether encrypted or not: sqlcipher3 (the dialect then maps its errors too).
    engine = create_engine(
        url,
        module=sqlcipher.dbapi(),
        connect_args={"timeout": BUSY_TIMEOUT_S},
        hide_parameters=True,
    )
    # First among the connect listeners: the key must precede the dialect's own first queries.
    event.listen(engine, "connect", on_connect, insert=True)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine, on_connect


def _create_private(path: Path) -> None:
    """Create the SQLite file readable by its owner only (its -wal and -shm files inherit
    the mode): the index holds patient names and IDs."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _sqlite_setup(key: bytes | None, autocheckpoint: bool = True) -> Callable[[Any, Any], None]:
    """What every new SQLite connection runs first: the key (if any), then the settings."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if key is not None:
            sqlcipher.apply_key(dbapi_connection, key)
        _sqlite_on_connect(dbapi_connection, _record)
        if not autocheckpoint:
            dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    return on_connect


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions behind our back: `begin` below does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA temp_store=MEMORY")  # sorts and temp tables: never a temp file
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
