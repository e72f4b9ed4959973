"""The audit log's format: one hash-chained canonical JSON line per event, and its verifier.

Each line is one canonical JSON object (sorted keys, no spaces)::

    {"action":"E","detail":{...},"event":"association","hash":H,"objects":[...],
     "outcome":0,"participants":[...],"prev":P,"seq":N,"time":"2025-01-01T00:00:00.000000Z"}

`hash` is the SHA-256 (hex) of the line's canonical JSON without `hash`; `prev` is the previous
line's `hash` (64 zeros for the first line); `seq` counts from 1. A sidecar file ``<log>.head``
records the last seq and hash, so that cutting lines off the end is detected too.

What this detects: an edited, deleted, inserted or reordered line, and a truncated tail. What it
cannot: someone with write access to both files who rewrites the chain from the edit onwards.
Ship events off the machine (syslog, `pacsguard.archive.audit.syslog`) for that. The writer is
`pacsguard.archive.audit.log.AuditLog`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.errors import AuditLogError

GENESIS: Final = "0" * 64
INCOMPLETE_LAST_LINE: Final = "incomplete last line"
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


def digest_of(body: dict[str, Any]) -> str:
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


def read_head(path: Path) -> tuple[int, str] | None:
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


def parse_record(raw: bytes) -> dict[str, Any] | None:
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
    head = read_head(path)
    head_line_hash: str | None = None
    top_line = 0
    top_seq: int = 0
    top_hash: str | None = GENESIS  # of the line with the highest seq so far
    for number, raw in enumerate(lines, start=1):
        record = parse_record(raw)
        if record is None:
            problems.append(Problem(number, "not a valid audit record: edited or corrupted"))
            top_seq, top_hash, top_line = top_seq + 1, None, number
            continue
        body = {k: v for k, v in record.items() if k != "hash"}
        if canonical(record) != raw or digest_of(body) != record["hash"]:
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
            Problem(count + 1, f"{INCOMPLETE_LAST_LINE}: truncated or an interrupted write")
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
