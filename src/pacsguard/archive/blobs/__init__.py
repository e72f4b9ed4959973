"""Blob storage: instance bytes, keyed by validated UIDs; a folder by default."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    """Durable byte storage. `put` returns only once the bytes survive a power cut."""

    def put(self, key: str, source: BinaryIO) -> BlobInfo:
        """Write all of `source` under `key`: temp file, fsync, rename, fsync directory."""
        ...

    def open(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def keys(self) -> Iterator[str]: ...
