"""The resume journal of a sharded scan: which shards are durably written, and where.

A run writes its JSON Lines output one shard at a time: the shard's records are appended,
flushed and fsync'd, and only then is the shard journaled as done, with the output offsets it
occupies, in a small SQLite file per run (`STATE_DIR/RUN_ID.sqlite`, synchronous=FULL). The
output therefore never holds a record the journal does not know, except in the tail after the
last journaled shard: a shard being written when the coordinator died. Resuming cuts that tail
off and runs only the shards not journaled, so every target ends up in the output exactly once.

The journal also keeps a fingerprint of what was scanned (targets, exclusions, ports, probe
options, shard size) and the output path: a resume with other targets or another output would
mix two scans, so it is refused and the message says what to repeat.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from pacsguard.errors import ResumeError
from pacsguard.scan.model import Target
from pacsguard.scan.targets import Scope

_RUN_ID: Final = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS run (
    run_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    output TEXT NOT NULL,
    shard_size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    shards INTEGER,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS shard (
    idx INTEGER PRIMARY KEY,
    records INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    done_at TEXT NOT NULL
);
"""


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/pacsguard/runs`, or `~/.local/state/pacsguard/runs`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pacsguard" / "runs"


def new_run_id() -> str:
    """A sortable, unguessable-enough name: UTC time plus six hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def scan_fingerprint(scope: Scope | Sequence[Target], options: object, shard_size: int) -> str:
    """SHA-256 over what decides the shards' contents: same fingerprint, same shards."""
    if isinstance(scope, Scope):
        targets: Any = {
            "specs": [[str(s.network), s.port] for s in scope.specs],
            "ports": list(scope.ports),
            "excludes": [str(n) for n in scope.excludes],
            # -iL files are read again when iterated: a file edited since (size, mtime)
            # would shift every later shard, so it changes the fingerprint.
            "files": [
                [str(f.path.resolve()), str(f.format), f.entries, f.targets, list(f.signature)]
                for f in scope.files
            ],
        }
    else:
        targets = [[t.host, t.port, t.transport] for t in scope]
    text = json.dumps(
        {"targets": targets, "options": repr(options), "shard_size": shard_size},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EarlierShards:
    """What a resumed run had already written: shard indexes and where the output ends."""

    done: frozenset[int]
    end_offset: int


class RunJournal:
    """One run's journal and output file, held exclusively by one coordinator at a time.

    Use `RunJournal.start(...)` for a new run or `RunJournal.resume(...)`, then `append_shard`
    for each finished shard, `finish` at the end, and `close`.
    """

    def __init__(
        self, run_id: str, path: Path, db: sqlite3.Connection, lock: IO[bytes], out: IO[bytes]
    ) -> None:
        self.run_id = run_id
        self.path = path
        self._db = db
        self._lock = lock
        self._out = out
        #: The JSON Lines file the run writes.
        self.output = Path(out.name)
        self._end = out.seek(0, os.SEEK_END)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls, state_dir: Path, run_id: str, *, fingerprint: str, output: Path, shard_size: int
    ) -> RunJournal:
        """Create the journal of a new run and an empty output file."""
        _check_run_id(run_id)
        path = _journal_path(state_dir, run_id)
        if path.exists():
            raise ResumeError(f"run {run_id} already exists in {state_dir}: resume it instead")
        try:
            out = output.open("wb")
        except OSError as exc:
            raise ResumeError(f"cannot write {output}: {exc.strerror}") from None
        try:
            _fsync_dir(output.resolve().parent)
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = _lock(path, run_id)
        except BaseException:
            out.close()
            raise
        try:
            db = _connect(path)
            with db:
                db.execute(
                    "INSERT INTO run (run_id, fingerprint, output, shard_size, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (run_id, fingerprint, str(output.resolve()), shard_size, _now()),
                )
        except BaseException:
            out.close()
            lock.close()
            raise
        return cls(run_id, path, db, lock, out)

    @classmethod
    def resume(
        cls, state_dir: Path, run_id: str, *, fingerprint: str, output: Path | None
    ) -> tuple[RunJournal, EarlierShards]:
        """Reopen a run: check it is the same scan, cut the output back to its last shard."""
        _check_run_id(run_id)
        path = _journal_path(state_dir, run_id)
        if not path.exists():
            raise ResumeError(
                f"no run {run_id} in {state_dir}: check the run id printed when the scan "
                "started, and --state-dir"
            )
        lock = _lock(path, run_id)
        try:
            db = _connect(path)
            row = db.execute("SELECT fingerprint, output FROM run WHERE run_id = ?", (run_id,))
            found = row.fetchone()
            if found is None:
                raise ResumeError(f"journal {path} does not describe run {run_id}")
            recorded_fingerprint, recorded_output = str(found[0]), Path(found[1])
            if fingerprint != recorded_fingerprint:
                raise ResumeError(
                    f"run {run_id} scanned other targets or with other options: repeat the "
                    "original command line (targets, ports, exclusions, probe options, "
                    "GeoIP files, --shard-size) and add --resume"
                )
            if output is not None and output.resolve() != recorded_output:
                raise ResumeError(
                    f"run {run_id} writes to {recorded_output}, not {output}: give the same -o"
                )
            done, end = _done_shards(db)
            try:
                out = recorded_output.open("r+b")
            except FileNotFoundError:
                raise ResumeError(
                    f"the output of run {run_id}, {recorded_output}, is gone: nothing to resume"
                ) from None
            size = out.seek(0, os.SEEK_END)
            if size < end:
                out.close()
                raise ResumeError(
                    f"{recorded_output} is shorter ({size} bytes) than run {run_id} journaled "
                    f"({end} bytes): it was changed since; start a new run"
                )
            # A shard cut short by the coordinator's death: its targets run again.
            out.truncate(end)
            os.fsync(out.fileno())
        except BaseException:
            lock.close()
            raise
        return cls(run_id, path, db, lock, out), EarlierShards(frozenset(done), end)

    # -- writing ---------------------------------------------------------------------------

    def append_shard(self, index: int, lines: Sequence[str]) -> None:
        """Append a shard's records durably, then journal the shard as done."""
        self.append_shards([(index, "".join(lines).encode("utf-8"), len(lines))])

    def append_shards(self, shards: Sequence[tuple[int, bytes, int]]) -> None:
        """Append shards' records (index, JSON Lines as UTF-8, record count) with one fsync,
        then journal them all as done in one commit: a coordinator writing shards that
        finished together waits for the disk once, not once per shard (a commit with
        synchronous=FULL is several fsyncs)."""
        if not shards:
            return
        rows = []
        self._out.seek(self._end)
        for index, data, count in shards:
            self._out.write(data)
            rows.append((index, count, self._end, self._end + len(data), _now()))
            self._end += len(data)
        self._out.flush()
        os.fsync(self._out.fileno())
        with self._db:
            self._db.executemany(
                "INSERT INTO shard (idx, records, start_offset, end_offset, done_at)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def finish(self, shards: int) -> None:
        with self._db:
            self._db.execute(
                "UPDATE run SET shards = ?, finished_at = ? WHERE run_id = ?",
                (shards, _now(), self.run_id),
            )

    def earlier_records(self, end_offset: int) -> Iterator[dict[str, Any]]:
        """The records written before a resume (the first `end_offset` bytes), parsed."""
        self._out.seek(0)
        remaining = end_offset
        while remaining > 0:
            line = self._out.readline(remaining)
            if not line:
                break
            remaining -= len(line)
            loaded: dict[str, Any] = json.loads(line)
            yield loaded

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._out.close()
        self._db.close()
        self._lock.close()

    def __enter__(self) -> RunJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def done_shards(state_dir: Path, run_id: str) -> frozenset[int]:
    """Shards journaled as done, read without taking the run's lock (for watchers and tests)."""
    _check_run_id(run_id)
    db = sqlite3.connect(f"file:{_journal_path(state_dir, run_id)}?mode=ro", uri=True)
    try:
        return frozenset(_done_shards(db)[0])
    finally:
        db.close()


def _done_shards(db: sqlite3.Connection) -> tuple[Iterable[int], int]:
    rows = db.execute("SELECT idx, end_offset FROM shard").fetchall()
    return [int(r[0]) for r in rows], max((int(r[1]) for r in rows), default=0)


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.match(run_id):
        raise ResumeError(
            f"bad run id {run_id!r}: use the id printed when the scan started "
            "(letters, digits, '-' and '_')"
        )


def _journal_path(state_dir: Path, run_id: str) -> Path:
    return state_dir / f"{run_id}.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED")
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


def _lock(path: Path, run_id: str) -> IO[bytes]:
    """An exclusive lock on `RUN_ID.lock`: two coordinators on one run would interleave."""
    lock = path.with_suffix(".lock").open("ab")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ResumeError(f"run {run_id} is in use by another pacsguard process") from None
    return lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
