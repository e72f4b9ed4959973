"""The index: where instances are recorded and queried. SQLite (WAL) or PostgreSQL."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Protocol

from pacsguard.archive.model import AddOutcome, InstanceRecord, QueryRequest
from pacsguard.dicom.levels import Level

#: SQLite's result code for "database or disk is full".
_SQLITE_FULL = 13


class IndexStore(Protocol):
    """What the archive service needs from an index. One contract test suite runs on each."""

    def add(
        self,
        record: InstanceRecord,
        *,
        before_commit: Callable[[AddOutcome], None] | None = None,
    ) -> AddOutcome:
        """Record an instance durably (committed before return). `before_commit` is called
        with the outcome once the row is written and before the commit, so that the caller
        can overlap work of its own with the commit; it is not called for duplicates."""
        ...

    def find(self, request: QueryRequest) -> Iterator[dict[str, str]]:
        """Matching entities at the request's level: keyword -> value for each requested key
        (plus the level's unique key); at most `request.limit` of them after skipping
        `request.offset`, in a stable order (the order the entities were first stored in)."""
        ...

    def instances(self, level: Level, uid: str) -> list[InstanceRecord]:
        """Every instance under the entity `uid` at `level` (patient ID at PATIENT level)."""
        ...

    def get(self, sop_instance_uid: str) -> InstanceRecord | None: ...

    def stored_copy(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(sha256, blob_key) of a stored instance, or None: a cheap duplicate check."""
        ...

    def all_blob_keys(self) -> Iterator[tuple[str, str, int]]:
        """(blob_key, sha256, size) of every instance: what fsck compares with the blob store."""
        ...

    def remove(self, sop_instance_uid: str) -> None: ...

    def close(self) -> None: ...


def out_of_space(error: BaseException) -> bool:
    """Whether an index write failed for lack of room (a full disk or quota, SQLite's
    SQLITE_FULL, PostgreSQL's class 53 "insufficient resources") rather than because the index
    is unreachable or broken: the first is "out of resources" (0xA700), the second a
    processing failure (0x0110). Follows SQLAlchemy's `orig` and the exception chain."""
    current: BaseException | None = error
    for _ in range(8):  # a chain is short; a cycle must not loop forever
        if current is None:
            return False
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("53"):
            return True
        if getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if "database or disk is full" in str(current):  # drivers without sqlite_errorcode
            return True
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return False
