"""fsck: does the index agree with the blob store?

`check_consistency` is pure: it compares what the index records (key, SHA-256, size) with the
keys the store holds and, when given a `verify` function, with what each blob really contains.
`run_fsck` feeds it from an IndexStore and a BlobStore.

- missing: the index names a blob the store does not have (the instance cannot be retrieved);
- orphans: the store holds a blob no instance names (left by a crash between blob and index);
- mismatches: the blob's size or SHA-256 differs from the index's record (corruption);
- unreadable: `verify` raised (a decryption failure, an I/O error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pacsguard.archive.blobs import BlobStore
from pacsguard.archive.index import IndexStore

#: A blob's key, its SHA-256 (hex) and its size in bytes, as the index records them.
IndexEntry = tuple[str, str, int]
#: Reads a blob through: its actual (size, SHA-256).
Verifier = Callable[[str], tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Mismatch:
    key: str
    expected_size: int
    expected_sha256: str
    actual_size: int
    actual_sha256: str


@dataclass(frozen=True, slots=True)
class FsckReport:
    checked: int
    missing: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    mismatches: tuple[Mismatch, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
    verified: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.orphans or self.mismatches or self.unreadable)


def check_consistency(
    index_entries: Iterable[IndexEntry],
    blob_keys: Iterable[str],
    verify: Verifier | None = None,
) -> FsckReport:
    """Compare the index with the blob store; `verify` (optional) reads each indexed blob."""
    expected: dict[str, list[tuple[str, int]]] = {}
    for key, sha256, size in index_entries:
        expected.setdefault(key, []).append((sha256, size))
    present = set(blob_keys)
    missing = sorted(key for key in expected if key not in present)
    orphans = sorted(present - expected.keys())
    mismatches: list[Mismatch] = []
    unreadable: list[tuple[str, str]] = []
    if verify is not None:
        for key in sorted(present & expected.keys()):
            try:
                actual_size, actual_sha256 = verify(key)
            except Exception as error:  # reported, and fsck goes on
                unreadable.append((key, f"{type(error).__name__}: {error}"))
                continue
            mismatches.extend(
                Mismatch(key, size, sha256, actual_size, actual_sha256)
                for sha256, size in expected[key]
                if (sha256, size) != (actual_sha256, actual_size)
            )
    return FsckReport(
        checked=len(expected),
        missing=tuple(missing),
        orphans=tuple(orphans),
        mismatches=tuple(mismatches),
        unreadable=tuple(unreadable),
        verified=verify is not None,
    )


def read_through(blobs: BlobStore, key: str, *, chunk: int = 1 << 20) -> tuple[int, str]:
    """A blob's actual (size, SHA-256), streamed through `chunk` bytes at a time."""
    digest = hashlib.sha256()
    size = 0
    with blobs.open(key) as stream:
        while data := stream.read(chunk):
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()


def run_fsck(index: IndexStore, blobs: BlobStore, *, verify_hashes: bool) -> FsckReport:
    """Check `index` against `blobs`; with `verify_hashes`, read every blob through."""

    def verify(key: str) -> tuple[int, str]:
        return read_through(blobs, key)

    return check_consistency(index.all_blob_keys(), blobs.keys(), verify if verify_hashes else None)
