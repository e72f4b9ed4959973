"""The audit log's writer: append-only, hash-chained (format and verifier: `.chain`), durable
and fail-closed. The names of `.chain` are re-exported here for existing callers.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

from pacsguard.archive.audit.chain import (
    GENESIS,
    INCOMPLETE_LAST_LINE,
    LoggedEvent,
    Problem,
    VerifyReport,
    canonical,
    digest_of,
    event_fields,
    event_from_fields,
    format_time,
    head_path,
    parse_record,
    read_events,
    read_head,
    verify,
)
from pacsguard.archive.audit.events import AuditEvent
from pacsguard.errors import AuditLogError

__all__ = [
    "GENESIS",
    "AuditLog",
    "LoggedEvent",
    "Problem",
    "VerifyReport",
    "canonical",
    "event_fields",
    "event_from_fields",
    "format_time",
    "head_path",
    "read_events",
    "verify",
]

log = logging.getLogger(__name__)

#: Bytes of the head record: JSON of seq and hash, space-padded, newline-terminated.
_HEAD_SIZE: Final = 128


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Append-only writer: thread-safe, one writer process (flock), durable by default.

    With ``fsync=True`` each `append` returns only after the line is on disk. Lines are synced
    by one syncer thread (group commit): a sync covers every line written before it started,
    so concurrent writers share fsyncs, and `emit_deferred` lets a caller write the line now,
    do other durable work while it syncs, and wait for it afterwards. The head file, which
    only guards against a truncated tail, is updated after each sync (never ahead of the
    durable lines) and is not itself synced. Implements `AuditSink`.

    It fails closed, and recovers by itself:

    - A line is written whole or not at all. A failed or short write (ENOSPC) is cut off
      again (ftruncate to where the last whole line ends), the chain does not advance, and
      the caller gets AuditLogError: its operation fails, and the next line starts clean.
    - A failed fsync fails every waiter of a line not yet durable, and new lines are refused
      from then on; the syncer thread keeps running. Every `retry_interval` seconds it writes
      the unsynced lines again, from memory, where the durable part of the file ends, and
      syncs. Why rewrite rather than fsync again: after a failed fsync Linux may already have
      marked the dirty pages clean (their data lost), and a second fsync then succeeds for
      data that never reached the disk; only a rewrite makes "durable" true again. Lines whose
      waiters failed can thus still become durable later: they say what the archive did (a
      store whose index row committed), though the operation was answered with a failure.
    - It logs one error when it becomes unwritable and one warning when it is written and
      synced again, not one line per refused operation.

    At open, a last line without its newline (a crash or a full disk mid-write) is cut off,
    with a warning, if every line before it verifies; a whole record missing only its newline
    is kept. Anything else wrong (a torn line in the middle, a head ahead of the file) refuses
    the open: run `verify` first.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        retry_interval: float = 1.0,
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._clock = clock
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # No O_APPEND: each line goes to an explicit offset (pwrite), so that a failed write
        # can be cut off and unsynced lines rewritten in place. flock keeps other writers out.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise AuditLogError(
                f"{path} is open for writing by another process (is a `pacsguard serve` "
                "already running on this data folder? stop it first)"
            ) from None
        try:
            self._seq, self._prev = _resume(path, self._fd)
            self._end = os.fstat(self._fd).st_size
            head = head_path(path)
            self._head_fd = os.open(head, os.O_WRONLY | os.O_CREAT, 0o600)
        except (AuditLogError, OSError):
            os.close(self._fd)
            raise
        if os.fstat(self._head_fd).st_size != _HEAD_SIZE:  # new, or an older head format
            os.ftruncate(self._head_fd, 0)
            if self._seq > 0:
                self._write_head(self._seq, self._prev)
        # Under _lock: whole lines end at `_end`; those past `_durable_end` are not synced yet
        # and kept as (seq, bytes) to write again after a failed fsync.
        self._durable_end = self._end
        self._unsynced: deque[tuple[int, bytes]] = deque()
        self._torn = False  # a failed write could not be cut off: cut before the next one
        self._refusing: OSError | None = None  # a failed fsync: no new lines until rewritten
        # Group commit: lines up to `_written` are written, up to `_durable` are synced.
        self._synced = threading.Condition()
        self._written = (self._seq, self._prev)
        self._durable = self._seq
        self._sync_error: OSError | None = None
        self._closing = False
        # Health, for one log line each way: the error, and the seq written when it happened.
        self._health = threading.Lock()
        self._unwritable: tuple[OSError, int] | None = None
        self._head_failed = False
        self._syncer: threading.Thread | None = None
        if fsync:
            self._syncer = threading.Thread(
                target=self._sync_loop, name="pacsguard-audit-sync", daemon=True
            )
            self._syncer.start()

    @property
    def writable(self) -> bool:
        """False from a failed write or sync until a later line is durable again."""
        return self._unwritable is None

    def _write(self, event: AuditEvent) -> LoggedEvent:
        if self._refusing is not None:  # fast refusal while the syncer retries
            raise self._refused()
        with self._lock:
            if self._fd < 0:
                raise AuditLogError(f"{self.path} is closed")
            if self._refusing is not None:
                raise self._refused()
            moment = self._clock()
            body = {
                "seq": self._seq + 1,
                "time": format_time(moment),
                "prev": self._prev,
                **event_fields(event),
            }
            digest = digest_of(body)
            line = canonical({**body, "hash": digest}) + b"\n"
            try:
                if self._torn:
                    os.ftruncate(self._fd, self._end)
                    self._torn = False
                _pwrite_all(self._fd, line, self._end)
            except OSError as error:
                self._cut_back()
                self._became_unwritable(error, self._seq)
                raise AuditLogError(
                    f"{self.path}: audit line not written ({_reason(error)}); operation refused"
                ) from None
            self._end += len(line)
            self._seq, self._prev = self._seq + 1, digest
            if self._fsync:
                self._unsynced.append((self._seq, line))
                with self._synced:
                    self._written = (self._seq, digest)
                    self._synced.notify_all()
            else:
                self._update_head(self._seq, digest)
                self._became_writable(self._seq)
            return LoggedEvent(self._seq, moment, event, digest)

    def _refused(self) -> AuditLogError:
        return AuditLogError(
            f"{self.path}: fsync failed ({_reason(self._refusing)}); audit lines are refused "
            "until they can be synced again"
        )

    def _cut_back(self) -> None:
        """Remove whatever part of a failed write reached the file (under _lock)."""
        try:
            os.ftruncate(self._fd, self._end)
        except OSError:
            self._torn = True

    def _sync_loop(self) -> None:
        while True:
            with self._synced:
                while (
                    not self._closing
                    and self._sync_error is None
                    and self._durable >= self._written[0]
                ):
                    self._synced.wait()
                failed, closing = self._sync_error is not None, self._closing
                if failed and not closing:
                    self._synced.wait(timeout=self._retry_interval)
                elif not failed and self._durable >= self._written[0]:
                    return  # closing, and nothing left to sync
                seq, digest = self._written
            if failed:
                if not self._rewrite_unsynced() and closing:
                    return  # never acknowledged: their waiters failed
            else:
                self._sync(seq, digest)

    def _sync(self, seq: int, digest: str) -> None:
        try:
            os.fsync(self._fd)
        except OSError as error:
            with self._lock:
                self._refusing = error
            with self._synced:
                self._sync_error = error
                self._synced.notify_all()
            self._became_unwritable(error, seq)
            return
        with self._lock:
            while self._unsynced and self._unsynced[0][0] <= seq:
                self._durable_end += len(self._unsynced.popleft()[1])
        # The head may lag the durable lines after a crash (verify allows that), but must
        # never lead them: it is written only once its line is on disk.
        self._update_head(seq, digest)
        with self._synced:
            self._durable = seq
            self._synced.notify_all()
        self._became_writable(seq)

    def _rewrite_unsynced(self) -> bool:
        """After a failed fsync: write every unsynced line again and sync; True on success."""
        with self._lock:
            if self._fd < 0:
                return False
            data = b"".join(line for _, line in self._unsynced)
            seq, digest = self._seq, self._prev
            try:
                _pwrite_all(self._fd, data, self._durable_end)
                os.ftruncate(self._fd, self._durable_end + len(data))
                os.fsync(self._fd)
            except OSError as error:
                log.debug("audit log %s: retry failed: %s", self.path, error)
                return False
            self._unsynced.clear()
            self._durable_end = self._end = self._durable_end + len(data)
            self._torn = False
            self._refusing = None
        self._update_head(seq, digest)
        with self._synced:
            self._sync_error = None
            self._durable = seq
            self._synced.notify_all()
        self._became_writable(seq, rewritten=True)
        return True

    def _became_unwritable(self, error: OSError, seq: int) -> None:
        with self._health:
            if self._unwritable is not None:
                return
            self._unwritable = (error, seq)
        log.error(
            "audit log %s cannot be written (%s): stores, queries, retrieves and new "
            "associations are refused until it can; the archive resumes by itself once it can "
            "write and sync the log again (free space, fix the disk)",
            self.path,
            _reason(error),
        )

    def _became_writable(self, durable_seq: int, *, rewritten: bool = False) -> None:
        """A line written after the failure is durable (or the unsynced ones were rewritten)."""
        if self._unwritable is None:
            return
        with self._health:
            if self._unwritable is None or (not rewritten and durable_seq <= self._unwritable[1]):
                return
            self._unwritable = None
        log.warning(
            "audit log %s is written and synced again: audited operations resume", self.path
        )

    def wait_durable(self, seq: int) -> None:
        """Return once the line `seq` is on disk; AuditLogError if syncing failed."""
        if not self._fsync:
            return
        with self._synced:
            while self._durable < seq:
                if self._sync_error is not None:
                    raise AuditLogError(
                        f"{self.path}: fsync failed ({_reason(self._sync_error)}); "
                        "operation refused"
                    )
                if self._syncer is None or not self._syncer.is_alive():
                    raise AuditLogError(f"{self.path} is closed")
                self._synced.wait(timeout=1.0)

    def append(self, event: AuditEvent) -> LoggedEvent:
        """Write one event and return once it is durable."""
        logged = self._write(event)
        self.wait_durable(logged.seq)
        return logged

    def emit_deferred(self, event: AuditEvent) -> Callable[[], None]:
        """Write one event now; the returned function waits until it is durable."""
        seq = self._write(event).seq
        return lambda: self.wait_durable(seq)

    def _write_head(self, seq: int, digest: str) -> None:
        """Overwrite the head in place: one fixed-size record at offset 0, padded so that each
        write replaces the whole previous one (a rename per event cost more than the fsync)."""
        # What json.dumps({"seq": seq, "hash": digest}) gives (a hex digest needs no escaping),
        # without the encoder's cost once per sync.
        record = f'{{"seq": {int(seq)}, "hash": "{digest}"}}'.encode().ljust(_HEAD_SIZE - 1) + b"\n"
        os.pwrite(self._head_fd, record, 0)

    def _update_head(self, seq: int, digest: str) -> None:
        """The head may lag (verify allows it): a failed update is logged once, not fatal."""
        try:
            self._write_head(seq, digest)
        except OSError as error:
            if not self._head_failed:
                self._head_failed = True
                log.warning("audit head %s not updated (%s)", head_path(self.path), error)

    def emit(self, event: AuditEvent) -> None:
        self.append(event)

    def close(self) -> None:
        """Sync what was written, stop the syncer and close the files."""
        with self._synced:
            self._closing = True
            self._synced.notify_all()
        if self._syncer is not None:
            self._syncer.join()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._head_fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reason(error: OSError | None) -> str:
    if error is None:
        return "unknown error"
    return error.strerror or str(error) or error.__class__.__name__


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view, offset = view[written:], offset + written


def _whole_lines_end(path: Path) -> int:
    """The size of the file up to its last newline (the whole lines)."""
    with path.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            step = min(4096, pos)
            f.seek(pos - step)
            block = f.read(step)
            found = block.rfind(b"\n")
            if found >= 0:
                return pos - step + found + 1
            pos -= step
        return 0


def _repair_torn_tail(path: Path, fd: int) -> None:
    """Cut off a last line without its newline, if everything before it verifies."""
    report = verify(path)
    others = [p for p in report.problems if not p.message.startswith(INCOMPLETE_LAST_LINE)]
    if others:
        raise AuditLogError(
            f"{path} ends with an incomplete line and does not verify before it ({others[0]}); "
            "run `pacsguard audit verify`, keep the file as evidence and move it aside before "
            "appending"
        )
    keep = _whole_lines_end(path)
    with path.open("rb") as f:
        f.seek(keep)
        tail = f.read()
    os.ftruncate(fd, keep)
    if _continues_chain(path, tail):  # a whole record that only lacks its newline
        _pwrite_all(fd, tail + b"\n", keep)
        os.fsync(fd)
        log.warning("%s: the last line lacked its newline; it verifies and was kept", path)
        return
    os.fsync(fd)
    log.warning(
        "%s: cut off an incomplete last line (%d bytes of an interrupted write); the %d lines "
        "before it verify",
        path,
        len(tail),
        report.lines - 1,
    )


def _continues_chain(path: Path, raw: bytes) -> bool:
    record = parse_record(raw)
    if record is None or canonical(record) != raw:
        return False
    if digest_of({k: v for k, v in record.items() if k != "hash"}) != record["hash"]:
        return False
    seq, prev = _resume(path)
    return bool(record["seq"] == seq + 1 and record["prev"] == prev)


def _last_line(path: Path) -> bytes:
    """The final line (without its newline); raises if the file ends mid-line."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return b""
        f.seek(end - 1)
        if f.read(1) != b"\n":
            raise AuditLogError(
                f"{path} ends with an incomplete line (interrupted write or truncation); run "
                "`pacsguard audit verify` and move the file aside before appending"
            )
        block, pos = b"", end - 1
        while pos > 0 and b"\n" not in block:
            step = min(4096, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step) + block
        return block.rsplit(b"\n", 1)[-1] if b"\n" in block else block


def _resume(path: Path, fd: int | None = None) -> tuple[int, str]:
    """The last seq and hash; with the writer's `fd`, a torn last line is repaired first."""
    if fd is not None and _whole_lines_end(path) != path.stat().st_size:
        _repair_torn_tail(path, fd)
    last = _last_line(path)
    if not last:
        return 0, GENESIS
    try:
        record = json.loads(last)
        seq, digest = int(record["seq"]), str(record["hash"])
    except (ValueError, KeyError, TypeError):
        raise AuditLogError(
            f"{path}: the last line is not an audit record; run `pacsguard audit verify`"
        ) from None
    head = read_head(path)
    if head is not None and head[0] > seq:
        raise AuditLogError(
            f"{path} ends at seq {seq} but its head records seq {head[0]}: lines were cut off "
            "the end; run `pacsguard audit verify` and keep the file as evidence"
        )
    return seq, digest
