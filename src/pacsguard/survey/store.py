"""`HistoryStore`: every run and every host record, in SQLite (a file) or PostgreSQL (shared).

`pacsguard scan --store URL` and `pacsguard survey import` write through one path: a
`RunWriter` takes scan records as JSON Lines text (the canonical output, so it sits beside the
`-o` file in the scan's tee) or as parsed records, and commits them in batches while the scan
streams; `close` stamps the run row with its end and counts. A run whose writer never closed
(the scan was killed) keeps the records committed so far and no `finished_at`.

URL: `sqlite:///path/history.sqlite` or `postgresql+psycopg://user:pw@host/db`. There is no
implicit default file: the user names the store (`--store` or `PACSGUARD_HISTORY`).
SQLite runs in WAL mode with `synchronous=NORMAL`: a survey is re-runnable, an archive is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pacsguard import __version__
from pacsguard.errors import UsageError
from pacsguard.survey.migrate import upgrade_to_head
from pacsguard.survey.schema import hosts, runs

ENV_VAR: Final = "PACSGUARD_HISTORY"
#: Records per commit while a scan streams (and at most this many seconds between commits).
BATCH: Final = 500
BATCH_SECONDS: Final = 2.0
UNKNOWN_COUNTRY: Final = "unknown"


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: int
    kind: str
    parent_run: int | None
    source: str
    scope: dict[str, Any]
    options: dict[str, Any]
    tool_version: str
    started_at: str
    finished_at: str | None
    records: int
    reachable: int
    dicom: int
    exposed: int
    studies: int
    instances: int


@dataclass(frozen=True, slots=True)
class Location:
    """Where a host is, from the record's optional `location` member (MaxMind enrichment)."""

    country: str
    asn: int | None
    as_org: str | None


def location_of(record: dict[str, Any]) -> Location:
    loc = record.get("location")
    if not isinstance(loc, dict):
        return Location(UNKNOWN_COUNTRY, None, None)
    country = str(loc.get("country") or UNKNOWN_COUNTRY)[:64]
    asn = loc.get("asn")
    org = loc.get("as_org")
    return Location(
        country,
        int(asn) if isinstance(asn, int | str) and str(asn).isdigit() else None,
        str(org) if org else None,
    )


def exposes_data(record: dict[str, Any]) -> bool:
    """Gives study or patient records to a stranger, and is not flagged as a honeypot."""
    if (record.get("honeypot") or {}).get("flagged"):
        return False
    exposure = record.get("exposure") or {}
    return int(exposure.get("studies", 0)) > 0 or int(exposure.get("patients", 0)) > 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class HistoryStore:
    """The store at `url`; migrates its schema on open."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise UsageError(
                f"history store {url!r} is not a database URL: use sqlite:///path/history.sqlite "
                "or postgresql+psycopg://user:password@host/db"
            ) from None
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise UsageError("the history store needs a file: sqlite:///path/history.sqlite")
            path = Path(parsed.database)
            if not path.parent.is_dir():
                raise UsageError(f"history store {path}: folder {path.parent} does not exist")
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            self._engine = create_engine(parsed, connect_args={"timeout": 30.0})
            event.listen(self._engine, "connect", _sqlite_on_connect)
            event.listen(self._engine, "begin", _sqlite_on_begin)
        elif self.dialect == "postgresql":
            self._engine = create_engine(parsed, pool_pre_ping=True)
        else:
            raise UsageError(
                f"unsupported history store {parsed.drivername!r}: "
                "use sqlite:///path or postgresql+psycopg://..."
            )
        try:
            with self._engine.begin() as conn:
                upgrade_to_head(conn)
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise UsageError(
                f"history store {parsed!r}: cannot open ({exc.__class__.__name__}: "
                f"{str(exc.orig) if hasattr(exc, 'orig') else exc})"
            ) from None

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------

    def start_run(
        self,
        kind: str,
        *,
        source: str = "",
        scope: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        parent_run: int | None = None,
        started_at: str | None = None,
    ) -> RunWriter:
        """A new run row (no end yet) and the writer that fills it."""
        with self._engine.begin() as conn:
            run_id = conn.execute(
                insert(runs)
                .values(
                    kind=kind,
                    parent_run=parent_run,
                    source=source,
                    scope=json.dumps(scope or {}, sort_keys=True),
                    options=json.dumps(options or {}, sort_keys=True),
                    tool_version=__version__,
                    started_at=started_at or _now(),
                )
                .returning(runs.c.id)
            ).scalar_one()
        return RunWriter(self, int(run_id))

    def _insert_hosts(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as conn:
            conn.execute(insert(hosts), rows)

    def delete_run(self, run_id: int) -> None:
        """Remove a run and its records (an import that failed half-way)."""
        with self._engine.begin() as conn:
            conn.execute(delete(hosts).where(hosts.c.run_id == run_id))
            conn.execute(delete(runs).where(runs.c.id == run_id))

    def _finish(self, run_id: int, values: dict[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    # -- reads ------------------------------------------------------------------------------

    def run(self, run_id: int) -> RunInfo:
        with self._engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise UsageError(f"no run {run_id} in the history store (`pacsguard survey runs`)")
        return _run_info(row)

    def runs(self) -> list[RunInfo]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(runs).order_by(runs.c.id)).mappings().all()
        return [_run_info(r) for r in rows]

    def host_count(self, run_id: int) -> int:
        with self._engine.connect() as conn:
            count = conn.execute(
                select(func.count()).select_from(hosts).where(hosts.c.run_id == run_id)
            ).scalar_one()
        return int(count)

    def records(self, run_id: int, *, exposed_only: bool = False) -> Iterator[dict[str, Any]]:
        """The run's records in the order they were stored, streamed from the database."""
        self.run(run_id)
        query = select(hosts.c.record).where(hosts.c.run_id == run_id).order_by(hosts.c.id)
        if exposed_only:
            query = query.where(hosts.c.exposed.is_(True))
        with self._engine.connect() as conn:
            result = conn.execution_options(yield_per=1000).execute(query)
            for (text,) in result:
                record: dict[str, Any] = json.loads(text)
                yield record


class RunWriter:
    """Adds records to one run in batched commits; `close` records the end and the counts.

    Also a text sink for JSON Lines (`write`/`flush`), so a scan hands it the very lines it
    writes to standard output and `-o`."""

    def __init__(self, store: HistoryStore, run_id: int) -> None:
        self.store = store
        self.run_id = run_id
        self._pending: list[dict[str, Any]] = []
        self._partial = ""
        self._last_commit = time.monotonic()
        self.counts = {"records": 0, "reachable": 0, "dicom": 0, "exposed": 0}
        self.studies = 0
        self.instances = 0
        self.closed = False

    def add(self, record: dict[str, Any]) -> None:
        loc = location_of(record)
        exposed = exposes_data(record)
        self.counts["records"] += 1
        self.counts["reachable"] += bool(record.get("reachable"))
        self.counts["dicom"] += bool(record.get("dicom"))
        if exposed:
            exposure = record.get("exposure") or {}
            self.counts["exposed"] += 1
            self.studies += int(exposure.get("studies", 0))
            self.instances += int(exposure.get("instances", 0))
        self._pending.append(
            {
                "run_id": self.run_id,
                "host": str(record["host"]),
                "port": int(record["port"]),
                "country": loc.country,
                "asn": loc.asn,
                "as_org": loc.as_org,
                "exposed": exposed,
                "record": json.dumps(record, sort_keys=True, separators=(",", ":")),
            }
        )
        if len(self._pending) >= BATCH:
            self.commit()

    def write(self, text: str, /) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.strip():
                self.add(json.loads(line))
        return len(text)

    def flush(self) -> None:
        if self._pending and time.monotonic() - self._last_commit >= BATCH_SECONDS:
            self.commit()

    def commit(self) -> None:
        if self._pending:
            self.store._insert_hosts(self._pending)
            self._pending = []
        self._last_commit = time.monotonic()

    def close(self, *, finished_at: str | None = None) -> int:
        """Commit what is left and stamp the run's end and counts; returns the run id."""
        self.commit()
        self.store._finish(
            self.run_id,
            {
                **self.counts,
                "studies": self.studies,
                "instances": self.instances,
                "finished_at": finished_at or _now(),
            },
        )
        self.closed = True
        return self.run_id

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self.closed:
            self.close()
        elif exc_type is not None:
            self.commit()  # keep what was scanned; no finished_at marks the run interrupted


def _run_info(row: Any) -> RunInfo:
    return RunInfo(
        id=int(row["id"]),
        kind=str(row["kind"]),
        parent_run=row["parent_run"],
        source=str(row["source"]),
        scope=json.loads(row["scope"]),
        options=json.loads(row["options"]),
        tool_version=str(row["tool_version"]),
        started_at=str(row["started_at"]),
        finished_at=row["finished_at"],
        records=int(row["records"]),
        reachable=int(row["reachable"]),
        dicom=int(row["dicom"]),
        exposed=int(row["exposed"]),
        studies=int(row["studies"]),
        instances=int(row["instances"]),
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # `begin` below opens transactions
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_store(url: str | None) -> HistoryStore:
    """The store named by `--store` or $PACSGUARD_HISTORY; a usage error when neither is set."""
    chosen = url or os.environ.get(ENV_VAR)
    if not chosen:
        raise UsageError(
            f"name the history store: --store sqlite:///history.sqlite (or set {ENV_VAR})"
        )
    return HistoryStore(chosen)
