"""A hash-chained, append-only JSON Lines audit log, and its verifier.

Each line is one canonical JSON object (sorted keys, no spaces)::

    {"action":"E","detail":{...},"event":"association","hash":H,"objects":[...],
     "outcome":0,"participants":[...],"prev":P,"seq":N,"time":"2025-01-01T00:00:00.000000Z"}

`hash` is the SHA-256 (hex) of the line's canonical JSON without `hash`; `prev` is the previous
line's `hash` (64 zeros for the first line); `seq` counts from 1. A sidecar file ``<log>.head``
records the last seq and hash, so that cutting lines off the end is detected too.

What this detects: an edited, deleted, inserted or reordered line, and a truncated tail. What it
cannot: someone with write access to both files who rewrites the chain from the edit onwards.
Ship events off the machine (syslog, `pacsguard.archive.audit.syslog`) for that.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.errors import AuditLogError

log = logging.getLogger(__name__)

GENESIS: Final = "0" * 64
#: Bytes of the head record: JSON of seq and hash, space-padded, newline-terminated.
_HEAD_SIZE: Final = 128
_FIELDS: Final = frozenset(
    {"seq", "time", "prev", "event", "action", "outcome", "participants", "objects", "detail"}
)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event as the log holds it: its place in the chain and when it was appended."""

    seq: int
    time: datetime
    event: AuditEvent
    hash: str


def canonical(record: dict[str, Any]) -> bytes:
    """The one byte form of a record that its hash covers."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(body)).hexdigest()


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """An event as plain JSON values."""
    return {
        "event": event.event.value,
        "action": event.action.value,
        "outcome": int(event.outcome),
        "participants": [
            {
                k: v
                for k, v in (
                    ("ae_title", p.ae_title),
                    ("address", p.address),
                    ("user", p.user),
                    ("requestor", p.requestor),
                )
                if v is not None
            }
            for p in event.participants
        ],
        "objects": [[kind, ident] for kind, ident in event.objects],
        "detail": dict(event.detail),
    }


def event_from_fields(record: dict[str, Any]) -> AuditEvent:
    """The inverse of `event_fields`; raises KeyError/ValueError/TypeError on a bad record."""
    return AuditEvent(
        event=EventType(record["event"]),
        action=EventAction(record["action"]),
        outcome=EventOutcome(record["outcome"]),
        participants=tuple(
            Participant(
                ae_title=p.get("ae_title"),
                address=p.get("address"),
                user=p.get("user"),
                requestor=bool(p.get("requestor", True)),
            )
            for p in record["participants"]
        ),
        objects=tuple((str(kind), str(ident)) for kind, ident in record["objects"]),
        detail=dict(record["detail"]),
    )


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Append-only writer: thread-safe, one writer process (flock), durable by default.

    With ``fsync=True`` each `append` returns only after the line is on disk. Lines are synced
    by one syncer thread (group commit): a sync covers every line written before it started,
    so concurrent writers share fsyncs, and `emit_deferred` lets a caller write the line now,
    do other durable work while it syncs, and wait for it afterwards. The head file, which
    only guards against a truncated tail, is updated after each sync (never ahead of the
    durable lines) and is not itself synced. Implements `AuditSink`. Refuses to open a log
    whose tail is broken; run `verify` first.
    """

    def __init__(
        self, path: Path, *, fsync: bool = True, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise AuditLogError(f"{path} is open for writing by another process") from None
        try:
            self._seq, self._prev = _resume(path)
            head = head_path(path)
            self._head_fd = os.open(head, os.O_WRONLY | os.O_CREAT, 0o600)
        except (AuditLogError, OSError):
            os.close(self._fd)
            raise
        if os.fstat(self._head_fd).st_size != _HEAD_SIZE:  # new, or an older head format
            os.ftruncate(self._head_fd, 0)
            if self._seq > 0:
                self._write_head(self._seq, self._prev)
        # Group commit: lines up to `_written` are written, up to `_durable` are synced.
        self._synced = threading.Condition()
        self._written = (self._seq, self._prev)
        self._durable = self._seq
        self._sync_error: OSError | None = None
        self._closing = False
        self._syncer: threading.Thread | None = None
        if fsync:
            self._syncer = threading.Thread(
                target=self._sync_loop, name="pacsguard-audit-sync", daemon=True
            )
            self._syncer.start()

    def _write(self, event: AuditEvent) -> LoggedEvent:
        with self._lock:
            if self._fd < 0:
                raise AuditLogError(f"{self.path} is closed")
            moment = self._clock()
            body = {
                "seq": self._seq + 1,
                "time": format_time(moment),
                "prev": self._prev,
                **event_fields(event),
            }
            digest = _digest(body)
            line = canonical({**body, "hash": digest}) + b"\n"
            _write_all(self._fd, line)
            self._seq, self._prev = self._seq + 1, digest
            if self._fsync:
                with self._synced:
                    self._written = (self._seq, digest)
                    self._synced.notify_all()
            else:
                self._write_head(self._seq, digest)
            return LoggedEvent(self._seq, moment, event, digest)

    def _sync_loop(self) -> None:
        while True:
            with self._synced:
                while not self._closing and self._durable >= self._written[0]:
                    self._synced.wait()
                if self._durable >= self._written[0]:
                    return  # closing, and nothing left to sync
                seq, digest = self._written
            try:
                os.fsync(self._fd)
                # The head may lag the durable lines after a crash (verify allows that), but
                # must never lead them: it is written only once its line is on disk.
                self._write_head(seq, digest)
            except OSError as error:
                log.error("audit log fsync failed: %s", error)
                with self._synced:
                    self._sync_error = error
                    self._synced.notify_all()
                return
            with self._synced:
                self._durable = seq
                self._synced.notify_all()

    def wait_durable(self, seq: int) -> None:
        """Return once the line `seq` is on disk; AuditLogError if syncing failed."""
        if not self._fsync:
            return
        with self._synced:
            while self._durable < seq:
                if self._sync_error is not None:
                    raise AuditLogError(f"{self.path}: fsync failed ({self._sync_error})")
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
        record = json.dumps({"seq": seq, "hash": digest}).encode().ljust(_HEAD_SIZE - 1) + b"\n"
        os.pwrite(self._head_fd, record, 0)

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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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


def _resume(path: Path) -> tuple[int, str]:
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
    head = _read_head(path)
    if head is not None and head[0] > seq:
        raise AuditLogError(
            f"{path} ends at seq {seq} but its head records seq {head[0]}: lines were cut off "
            "the end; run `pacsguard audit verify` and keep the file as evidence"
        )
    return seq, digest


def _read_head(path: Path) -> tuple[int, str] | None:
    try:
        text = head_path(path).read_text(encoding="utf-8")
        if not text:  # created, nothing appended yet
            return None
        data = json.loads(text)
        return int(data["seq"]), str(data["hash"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return (-1, "")


def read_events(path: Path) -> Iterator[LoggedEvent]:
    """Every event in the log, in order; does not check the chain (use `verify` for that)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = json.loads(raw)
                yield LoggedEvent(
                    seq=int(record["seq"]),
                    time=datetime.fromisoformat(record["time"]),
                    event=event_from_fields(record),
                    hash=str(record["hash"]),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditLogError(f"{path} line {number}: not an audit record ({exc})") from None


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    path: Path
    lines: int
    last_seq: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_line(self) -> int | None:
        return min((p.line for p in self.problems), default=None)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or set(record) != _FIELDS | {"hash"}:
        return None
    if not isinstance(record["seq"], int) or not isinstance(record["hash"], str):
        return None
    return record


def verify(path: Path) -> VerifyReport:
    """Check every line's hash, the chain, the sequence and the head; say which line broke.

    Lines are compared with the highest seq seen so far, so a deleted line or a swapped pair is
    reported where it happened instead of cascading through the rest of the file.
    """
    lines = path.read_bytes().split(b"\n")
    partial = lines.pop() if lines else b""
    problems: list[Problem] = []
    head = _read_head(path)
    head_line_hash: str | None = None
    top_line = 0
    top_seq: int = 0
    top_hash: str | None = GENESIS  # of the line with the highest seq so far
    for number, raw in enumerate(lines, start=1):
        record = _parse(raw)
        if record is None:
            problems.append(Problem(number, "not a valid audit record: edited or corrupted"))
            top_seq, top_hash, top_line = top_seq + 1, None, number
            continue
        body = {k: v for k, v in record.items() if k != "hash"}
        if canonical(record) != raw or _digest(body) != record["hash"]:
            problems.append(Problem(number, "content does not match its hash: line was edited"))
        seq = record["seq"]
        if seq <= top_seq:
            problems.append(
                Problem(number, f"seq {seq} after seq {top_seq}: lines reordered or duplicated")
            )
            continue
        if seq > top_seq + 1:
            problems.append(
                Problem(
                    number,
                    f"seq {seq} after seq {top_seq}: {seq - top_seq - 1} line(s) before it "
                    "were deleted (or moved)",
                )
            )
        elif top_hash is not None and record["prev"] != top_hash:
            where = f"line {top_line}" if top_line else "the start of the log"
            problems.append(
                Problem(
                    number,
                    f"prev does not match the hash of {where}: that line was rewritten, or "
                    "lines were replaced",
                )
            )
        top_seq, top_hash, top_line = seq, record["hash"], number
        if head is not None and seq == head[0]:
            head_line_hash = record["hash"]
    count = len(lines)
    if partial:
        problems.append(
            Problem(count + 1, "incomplete last line: truncated or an interrupted write")
        )
        count += 1
    problems.extend(_check_head(head, top_seq, head_line_hash, count))
    return VerifyReport(path, count, top_seq, tuple(problems))


def _check_head(
    head: tuple[int, str] | None, last_seq: int, line_hash: str | None, count: int
) -> list[Problem]:
    """The head may lag the log by a crash between the two writes, but never lead it."""
    if head is None:
        if last_seq == 0:
            return []
        return [Problem(count, "head file missing: a truncated tail cannot be ruled out")]
    seq, digest = head
    if seq < 0:
        return [Problem(count, "head file is corrupt: a truncated tail cannot be ruled out")]
    if seq > last_seq:
        return [
            Problem(
                count + 1,
                f"the log ends at seq {last_seq} but the head records seq {seq}: "
                f"{seq - last_seq} line(s) cut off the end",
            )
        ]
    if line_hash != digest:
        return [Problem(count, f"the line with seq {seq} differs from the head: tail rewritten")]
    return []
