"""fsck's pure comparison of the index with the blob store."""

from __future__ import annotations

import io

import pytest

from pacsguard.archive.blobs import BlobCorruptError
from pacsguard.archive.fsck import FsckReport, Mismatch, check_consistency, read_through

A, B, C = ("1.2.1", "a" * 64, 10), ("1.2.2", "b" * 64, 20), ("1.2.3", "c" * 64, 30)


def truth(*entries: tuple[str, str, int]) -> dict[str, tuple[int, str]]:
    return {key: (size, sha) for key, sha, size in entries}


def test_consistent_store_is_ok() -> None:
    actual = truth(A, B)
    report = check_consistency([A, B], ["1.2.2", "1.2.1"], actual.__getitem__)
    assert report == FsckReport(checked=2, verified=True)
    assert report.ok


def test_presence_only_without_verify() -> None:
    report = check_consistency([A, B], ["1.2.1", "1.2.9"])
    assert report.missing == ("1.2.2",)
    assert report.orphans == ("1.2.9",)
    assert not report.verified
    assert not report.ok


def test_size_and_hash_mismatches() -> None:
    actual = {"1.2.1": (11, A[1]), "1.2.2": (20, "0" * 64), "1.2.3": (30, C[1])}
    report = check_consistency([A, B, C], ["1.2.1", "1.2.2", "1.2.3"], actual.__getitem__)
    assert report.mismatches == (
        Mismatch("1.2.1", 10, A[1], 11, A[1]),
        Mismatch("1.2.2", 20, B[1], 20, "0" * 64),
    )
    assert report.missing == report.orphans == ()


def test_missing_blobs_are_not_verified() -> None:
    def verify(key: str) -> tuple[int, str]:
        raise AssertionError(f"{key} is missing and must not be read")

    assert check_consistency([A], [], verify).missing == ("1.2.1",)


def test_unreadable_blobs_are_reported_and_fsck_goes_on() -> None:
    def verify(key: str) -> tuple[int, str]:
        if key == "1.2.1":
            raise BlobCorruptError("chunk 0 failed authentication")
        return truth(B)[key]

    report = check_consistency([A, B], ["1.2.1", "1.2.2"], verify)
    assert report.unreadable == (("1.2.1", "BlobCorruptError: chunk 0 failed authentication"),)
    assert report.mismatches == ()
    assert not report.ok


def test_entries_sharing_a_key_are_each_compared() -> None:
    # content-addressed keys: two instances may name one blob; one record disagrees
    other = (A[0], "f" * 64, A[2])
    report = check_consistency([A, other], [A[0]], truth(A).__getitem__)
    assert report.checked == 1
    assert report.mismatches == (Mismatch(A[0], 10, "f" * 64, 10, A[1]),)


def test_inputs_are_consumed_once_as_iterators() -> None:
    report = check_consistency(iter([A, B]), iter(["1.2.1", "1.2.2"]))
    assert report.ok
    assert report.checked == 2


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_read_through_hashes_a_stream(chunk: int) -> None:
    class Store:
        def open(self, key: str) -> io.BytesIO:
            return io.BytesIO(b"abcdefg")

    size, sha = read_through(Store(), "1.2.1", chunk=chunk)  # type: ignore[arg-type]
    assert size == 7
    assert sha == "7d1a54127b222502f5b79b5fb0803061152a44f92b37e23c6527baf665d4da9a"
