"""FolderBlobStore on a real file system: durability steps, keys, encryption, bounded memory."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacsguard.archive.blobs import BlobConflictError, BlobCorruptError, BlobInfo, BlobStore, aead
from pacsguard.archive.blobs.folder import TEMP_PREFIX, FolderBlobStore
from pacsguard.archive.fsck import run_fsck
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.model import InstanceRecord

KEY = bytes(range(32))
UID = "1.2.826.0.1.3680043.2.1125.1.42"
DIGEST = hashlib.sha256(b"x").hexdigest()


@pytest.fixture(params=["plain", "encrypted"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FolderBlobStore:
    key = KEY if request.param == "encrypted" else None
    return FolderBlobStore(tmp_path / "blobs", encryption_key=key)


def stored_files(root: Path) -> list[Path]:
    return [p for p in (root / "objects").glob("*/*") if p.is_file()]


def test_folder_store_is_a_blob_store(store: FolderBlobStore) -> None:
    blobs: BlobStore = store
    assert list(blobs.keys()) == []


@pytest.mark.parametrize("payload", [b"", b"DICM", os.urandom(3 * aead.CHUNK + 17)])
def test_put_then_open_round_trips(store: FolderBlobStore, payload: bytes) -> None:
    info = store.put(UID, io.BytesIO(payload))
    assert info == BlobInfo(UID, len(payload), hashlib.sha256(payload).hexdigest())
    with store.open(UID) as stream:
        assert stream.read() == payload
    assert store.exists(UID)
    assert list(store.keys()) == [UID]
    assert store.verify(UID) == info


def test_encrypted_files_hold_no_plaintext(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path, encryption_key=KEY)
    secret = b"PatientName=Doe^John " * 1000
    store.put(UID, io.BytesIO(secret))
    (path,) = stored_files(tmp_path)
    raw = path.read_bytes()
    assert raw.startswith(aead.MAGIC)
    assert b"Doe^John" not in raw
    assert len(raw) == aead.HEADER.size + len(secret) + aead.TAG


def test_wrong_key_tampering_and_truncation_are_detected(tmp_path: Path) -> None:
    payload = os.urandom(2 * aead.CHUNK + 5)
    FolderBlobStore(tmp_path, encryption_key=KEY).put(UID, io.BytesIO(payload))
    (path,) = stored_files(tmp_path)
    other = FolderBlobStore(tmp_path, encryption_key=bytes(32))
    with pytest.raises(BlobCorruptError, match="authentication"), other.open(UID) as stream:
        stream.read()
    store = FolderBlobStore(tmp_path, encryption_key=KEY)
    original = path.read_bytes()
    for damaged in (
        original[:100] + bytes([original[100] ^ 1]) + original[101:],  # one bit flipped
        original[: aead.HEADER.size + aead.CHUNK + aead.TAG],  # cut at a chunk boundary
        original[:-1],  # cut inside the last chunk
    ):
        path.write_bytes(damaged)
        with pytest.raises(BlobCorruptError), store.open(UID) as stream:
            stream.read()
    path.write_bytes(b"not an encrypted blob, but long enough for a header")
    with pytest.raises(BlobCorruptError, match="header"):
        store.open(UID)
    path.write_bytes(b"short")
    with pytest.raises(BlobCorruptError, match="too short"):
        store.open(UID)


def test_a_blob_renamed_to_another_key_does_not_decrypt(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path, encryption_key=KEY)
    store.put(UID, io.BytesIO(b"one"))
    store.put("1.2.3", io.BytesIO(b"two"))
    target = tmp_path / "objects" / hashlib.sha256(b"1.2.3").hexdigest()[:2] / "1.2.3"
    (source,) = [p for p in stored_files(tmp_path) if p.name == UID]
    os.replace(source, target)
    with pytest.raises(BlobCorruptError), store.open("1.2.3") as stream:
        stream.read()


@pytest.mark.parametrize("key", [b"", b"short", bytes(31)])
def test_encryption_keys_must_be_aes_sized(tmp_path: Path, key: bytes) -> None:
    with pytest.raises(ValueError, match="16, 24 or 32"):
        FolderBlobStore(tmp_path, encryption_key=key)


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "..",
        "1.2/../3",
        "/abs",
        "1.2.3\x00",
        ".tmp-1",
        "1..2",
        "",
        "ABCDEF" * 8,
        "a" * 31,
        "1.2." + "3" * 62,
        "1.2.3 ",
    ],
)
def test_traversal_shaped_and_other_invalid_keys_are_refused(
    store: FolderBlobStore, key: str
) -> None:
    for call in (
        lambda: store.put(key, io.BytesIO(b"x")),
        lambda: store.open(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError, match="invalid blob key"):
            call()
    assert not any(store.root.rglob("passwd"))


def test_uid_and_digest_keys_fan_out(store: FolderBlobStore) -> None:
    for key in (UID, DIGEST, "1.2.3"):
        store.put(key, io.BytesIO(key.encode()))
    assert sorted(store.keys()) == sorted([UID, DIGEST, "1.2.3"])
    for path in stored_files(store.root):
        assert path.parent.name == hashlib.sha256(path.name.encode()).hexdigest()[:2]
        assert path.stat().st_mode & 0o077 == 0  # readable by the archive only


def _record_syncs_and_links(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        # An unnamed file keeps its "#inode (deleted)" name here even once linked.
        events.append(f"fsync-dir:{target.name}" if target.is_dir() else "fsync-file")
        real_fsync(fd)

    def link(src: str | Path, dst: str | Path, **kwargs: Any) -> None:
        named = not str(src).startswith("/proc/self/fd/")
        source = Path(src).name[:5] if named else "anonymous"
        events.append(f"link:{source}->{Path(dst).name}")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    return events


def test_put_links_an_unnamed_file_then_fsyncs_it_and_the_directory_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderBlobStore(tmp_path)
    events = _record_syncs_and_links(monkeypatch)
    store.put(UID, io.BytesIO(b"data"))
    fan = hashlib.sha256(UID.encode()).hexdigest()[:2]
    # the fan directory was made (and synced) with the store: no mkdir, no objects/ fsync; the
    # file and its directory are synced concurrently, both before put returns
    assert events[0] == f"link:anonymous->{UID}"
    assert sorted(events[1:]) == sorted(["fsync-file", f"fsync-dir:{fan}"])
    assert [p.name for p in stored_files(tmp_path)] == [UID]
    with store.open(UID) as stream:
        assert stream.read() == b"data"


def test_without_unnamed_files_put_uses_a_named_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderBlobStore(tmp_path)
    real_open = os.open

    def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:  # as a file system without it answers
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    events = _record_syncs_and_links(monkeypatch)
    store.put(UID, io.BytesIO(b"data"))
    fan = hashlib.sha256(UID.encode()).hexdigest()[:2]
    assert events == ["fsync-file", f"link:{TEMP_PREFIX}->{UID}", f"fsync-dir:{fan}"]
    assert [p.name for p in stored_files(tmp_path)] == [UID]  # the temp file is gone
    store.put("1.2.3", io.BytesIO(b"more"))
    assert sorted(store.keys()) == sorted([UID, "1.2.3"])


def test_a_new_store_makes_its_fans_and_layout_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_syncs_and_links(monkeypatch)
    FolderBlobStore(tmp_path)
    objects = tmp_path / "objects"
    assert (objects / "LAYOUT").read_text() == "fan-digits 2\n"
    fans = sorted(p.name for p in objects.iterdir() if p.is_dir())
    assert fans == [f"{n:02x}" for n in range(256)]
    # LAYOUT before any fan, every fan synced, then the directory that lists them
    assert events[:2] == [f"fsync-dir:{tmp_path.name}", "fsync-file"]  # objects/, LAYOUT
    assert events.count("fsync-file") == 1
    assert events[-1] == "fsync-dir:objects"
    assert sorted(e.removeprefix("fsync-dir:") for e in events[2:-1]) == fans


def test_a_legacy_store_keeps_three_digit_fans_made_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy_fan = hashlib.sha256(b"1.2.3").hexdigest()[:3]
    (tmp_path / "objects" / legacy_fan).mkdir(parents=True)
    (tmp_path / "objects" / legacy_fan / "1.2.3").write_bytes(b"stored before LAYOUT")
    store = FolderBlobStore(tmp_path)
    assert not (tmp_path / "objects" / "LAYOUT").exists()
    assert list(store.keys()) == ["1.2.3"]
    with store.open("1.2.3") as stream:
        assert stream.read() == b"stored before LAYOUT"
    events = _record_syncs_and_links(monkeypatch)
    store.put(UID, io.BytesIO(b"data"))
    fan = hashlib.sha256(UID.encode()).hexdigest()[:3]
    assert (tmp_path / "objects" / fan / UID).is_file()
    assert events[0] == f"link:anonymous->{UID}"
    assert sorted(events[1:3]) == sorted(["fsync-file", f"fsync-dir:{fan}"])
    assert events[3:] == ["fsync-dir:objects"]  # the fan directory was new
    assert sorted(FolderBlobStore(tmp_path).keys()) == sorted(["1.2.3", UID])


def test_a_layout_cut_short_by_a_crash_is_made_again(tmp_path: Path) -> None:
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects" / "LAYOUT").touch()  # created, its line never synced
    store = FolderBlobStore(tmp_path)
    assert (tmp_path / "objects" / "LAYOUT").read_text() == "fan-digits 2\n"
    store.put(UID, io.BytesIO(b"data"))
    assert list(FolderBlobStore(tmp_path).keys()) == [UID]


def test_an_unknown_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects" / "LAYOUT").write_text("fan-digits 7\n")
    with pytest.raises(ValueError, match="unknown blob layout"):
        FolderBlobStore(tmp_path)


def test_a_removed_fan_is_made_again(store: FolderBlobStore) -> None:
    fan = store.root / "objects" / hashlib.sha256(UID.encode()).hexdigest()[:2]
    fan.rmdir()
    store.put(UID, io.BytesIO(b"data"))
    assert list(store.keys()) == [UID]


def test_an_existing_blob_is_never_replaced(store: FolderBlobStore) -> None:
    first = store.put(UID, io.BytesIO(b"first"))
    assert store.put(UID, io.BytesIO(b"first")) == first  # an idempotent retry
    with pytest.raises(BlobConflictError, match=UID):
        store.put(UID, io.BytesIO(b"second"))
    with store.open(UID) as stream:
        assert stream.read() == b"first"
    assert [p.name for p in stored_files(store.root)] == [UID]


def test_racing_puts_of_one_key_keep_one_copy(store: FolderBlobStore) -> None:
    results: list[object] = []
    barrier = threading.Barrier(2)

    def put(payload: bytes) -> None:
        barrier.wait(timeout=10)
        try:
            results.append(store.put(UID, io.BytesIO(payload)))
        except BlobConflictError as error:
            results.append(error)

    threads = [threading.Thread(target=put, args=(p,)) for p in (b"a" * 5000, b"b" * 5000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(isinstance(r, BlobInfo) for r in results) == 1
    assert sum(isinstance(r, BlobConflictError) for r in results) == 1
    stored = next(r for r in results if isinstance(r, BlobInfo))
    assert store.verify(UID) == stored


def test_crash_leftovers_are_ignored_by_keys_and_swept(store: FolderBlobStore) -> None:
    store.put(UID, io.BytesIO(b"kept"))
    fan = next(p.parent for p in stored_files(store.root))
    (fan / f"{TEMP_PREFIX}abc123").write_bytes(b"half written")
    (fan / "README").write_text("not a blob")
    assert list(store.keys()) == [UID]
    assert store.sweep_temp(min_age_seconds=3600) == 0  # too recent: maybe a put in progress
    assert store.sweep_temp() == 1
    assert not (fan / f"{TEMP_PREFIX}abc123").exists()
    assert list(store.keys()) == [UID]


def test_a_failing_source_leaves_no_blob_and_no_temp_file(store: FolderBlobStore) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        store.put(UID, io.BufferedReader(Broken()))
    assert not store.exists(UID)
    assert list(store.root.rglob(f"{TEMP_PREFIX}*")) == []


def test_delete_is_durable_and_idempotent(store: FolderBlobStore) -> None:
    store.put(UID, io.BytesIO(b"x"))
    store.delete(UID)
    store.delete(UID)
    assert not store.exists(UID)
    with pytest.raises(FileNotFoundError):
        store.open(UID)


# -- bounded memory --------------------------------------------------------------------------


class Generated(io.RawIOBase):
    """`size` pseudo-random bytes made on the fly, in short reads like a network stream."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.left = size
        self.block = hashlib.sha512(b"seed").digest() * 1024  # 64 KiB
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left, len(self.block))
        buffer[:count] = self.block[:count]
        self.digest.update(self.block[:count])
        self.left -= count
        return count


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


@pytest.mark.usefixtures("traced")
def test_large_objects_stream_with_bounded_memory(store: FolderBlobStore) -> None:
    size = 96 * aead.CHUNK + 12345  # ~96 MiB
    source = Generated(size)
    tracemalloc.reset_peak()
    info = store.put(UID, io.BufferedReader(source, buffer_size=64 * 1024))
    _, peak_put = tracemalloc.get_traced_memory()
    assert info.size == size
    assert info.sha256 == source.digest.hexdigest()

    tracemalloc.reset_peak()
    digest = hashlib.sha256()
    with store.open(UID) as stream:
        while chunk := stream.read(aead.CHUNK):
            digest.update(chunk)
    _, peak_read = tracemalloc.get_traced_memory()
    assert digest.hexdigest() == info.sha256
    bound = 8 * aead.CHUNK  # a few chunks, whatever the object's size
    assert peak_put < bound, f"put peaked at {peak_put / 2**20:.1f} MiB"
    assert peak_read < bound, f"open/read peaked at {peak_read / 2**20:.1f} MiB"


# -- fsck over a real index and store --------------------------------------------------------


def test_run_fsck_finds_missing_orphan_and_corrupt_blobs(tmp_path: Path) -> None:
    index = SqlIndex(f"sqlite:///{tmp_path / 'index.db'}")
    store = FolderBlobStore(tmp_path / "blobs", encryption_key=KEY)
    try:
        for n in range(4):
            uid = f"1.2.3.{n}"
            info = store.put(uid, io.BytesIO(uid.encode() * 100))
            record = InstanceRecord(
                uid, "1.2.840.10008.5.1.4.1.1.7", "1.2.2", "1.2.1", "P", blob_key=uid,
                size=info.size, sha256=info.sha256,
            )  # fmt: skip
            index.add(record)
        assert run_fsck(index, store, verify_hashes=True).ok
        store.delete("1.2.3.0")
        store.put("1.2.3.99", io.BytesIO(b"orphan"))
        path = next(p for p in stored_files(store.root) if p.name == "1.2.3.1")
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
        quick = run_fsck(index, store, verify_hashes=False)
        assert (quick.missing, quick.orphans, quick.unreadable) == (("1.2.3.0",), ("1.2.3.99",), ())
        full = run_fsck(index, store, verify_hashes=True)
        assert [key for key, _ in full.unreadable] == ["1.2.3.1"]
        assert full.checked == 4
    finally:
        index.close()


def test_a_failed_directory_fsync_fails_the_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory is synced on another thread, beside the file: its failure still reaches
    the caller (the store answers a failure, never success), and later puts work again."""
    store = FolderBlobStore(tmp_path)
    real_fsync = os.fsync
    failing = [True]

    def fsync(fd: int) -> None:
        if failing[0] and Path(os.readlink(f"/proc/self/fd/{fd}")).is_dir():
            raise OSError(errno.EIO, "directory write failed")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="directory write failed"):
        store.put(UID, io.BytesIO(b"data"))
    failing[0] = False
    store.put("1.2.3", io.BytesIO(b"more"))
    with store.open("1.2.3") as stream:
        assert stream.read() == b"more"
