"""The index: where instances are recorded and queried. SQLite (WAL) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from pacsguard.archive.model import AddOutcome, InstanceRecord, QueryRequest
from pacsguard.dicom.levels import Level


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
        (plus the level's unique key), at most `request.limit` results."""
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
