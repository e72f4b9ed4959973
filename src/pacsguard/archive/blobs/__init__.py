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


class BlobConflictError(FileExistsError):
    """`put` under a key that already holds different bytes: the first bytes stay."""


class BlobCorruptError(OSError):
    """Stored bytes that fail their integrity check (tampered, truncated, or a wrong key)."""


class BlobStore(Protocol):
    """Durable byte storage. `put` returns only once the bytes survive a power cut.

    Keys are validated (UIDs or hex digests); anything else raises ValueError. A blob is
    never replaced: `put` of identical bytes under an existing key returns its info (a
    retry), different bytes raise BlobConflictError. `open` of a missing key raises
    FileNotFoundError; `delete` of a missing key does nothing.
    """

    def put(self, key: str, source: BinaryIO) -> BlobInfo:
        """Write all of `source` under `key`: temp file, fsync, rename, fsync directory."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A stream of the stored bytes (decrypted when stored encrypted)."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def keys(self) -> Iterator[str]: ...
