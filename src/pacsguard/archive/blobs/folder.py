"""`FolderBlobStore`: blobs as files under one directory, optionally encrypted (see `aead`).

Layout: `root/objects/<fan>/<key>`, where `<fan>` is the first hex digits of the key's SHA-256:
two in a store created now (256 directories, made with the store, so that no store pays for a
`mkdir` and its directory fsync; ten million blobs make ~40,000 files per directory, which
ext4's and XFS's hashed directories handle), three in a store created before `objects/LAYOUT`
existed (4,096 directories, made when first needed). `objects/LAYOUT` records the width.
Keys are validated before they come near a path: a UID (`is_valid_uid`) or a lowercase hex
digest of 32 to 128 digits; anything else, `../x` included, raises ValueError.

`put` streams `source` in 1 MiB chunks, hashing as it writes, into an unnamed file in the target
directory (Linux `O_TMPFILE`, mode 0600), links it under its key (`linkat`, which never replaces
an existing blob), and fsyncs the file and the directory at the same time (both are durable
when `put` returns; see `_sync_file_and_directory`). Where unnamed files are not available
it writes a named temporary file (`.tmp-*`) instead, fsyncs it, links it and fsyncs the
directory. Memory stays bounded by a few chunks whatever the object's size. A crash leaves at
most temp files, which `keys()` ignores and `sweep_temp()` removes, or an unacknowledged blob
without an index row, which crash recovery removes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from pacsguard.archive.blobs import BlobConflictError, BlobInfo, aead
from pacsguard.archive.model import is_valid_uid

CHUNK: Final = aead.CHUNK
TEMP_PREFIX: Final = ".tmp-"
_DIGEST: Final = re.compile(r"^[0-9a-f]{32,128}$")
#: Fan width (hex digits) of a store created now, and of one that has no LAYOUT file.
FAN_DIGITS: Final = 2
LEGACY_FAN_DIGITS: Final = 3
LAYOUT: Final = "LAYOUT"


def is_valid_key(key: str) -> bool:
    """A UID or a lowercase hex digest: the only strings that may name a blob file."""
    return is_valid_uid(key) or bool(_DIGEST.match(key))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirectorySyncer:
    """A few daemon threads that fsync directories while the caller fsyncs a file.

    Not a ThreadPoolExecutor: its `submit` takes a lock shared by every executor in the
    process (the DIMSE front end's among them), which a put would then contend for once per
    blob. Here a request is one put on a C-implemented queue and one lock to wait on."""

    THREADS: Final = 4

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[int, threading.Lock, list[OSError]]] = (
            queue.SimpleQueue()
        )
        self._started = False
        self._start_lock = threading.Lock()

    def start(self, directory: int) -> Callable[[], None]:
        """fsync `directory` on another thread; the result waits for it (and raises its
        error)."""
        if not self._started:
            self._start_threads()
        done, errors = threading.Lock(), list[OSError]()
        done.acquire()
        self._requests.put((directory, done, errors))

        def wait() -> None:
            done.acquire()
            if errors:
                raise errors[0]

        return wait

    def _start_threads(self) -> None:
        with self._start_lock:
            if self._started:
                return
            for n in range(self.THREADS):
                threading.Thread(
                    target=self._run, name=f"pacsguard-dirsync-{n}", daemon=True
                ).start()
            self._started = True

    def _run(self) -> None:
        while True:
            directory, done, errors = self._requests.get()
            try:
                os.fsync(directory)
            except OSError as error:
                errors.append(error)
            finally:
                done.release()


class FolderBlobStore:
    """Blobs in `root`; encrypted at rest with AES-GCM when `encryption_key` is given."""

    def __init__(self, root: Path, *, encryption_key: bytes | None = None) -> None:
        if encryption_key is not None:
            aead.check_key(encryption_key)
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._key = encryption_key
        self._anonymous = hasattr(os, "O_TMPFILE")  # cleared at the first sign it cannot work
        self._syncer = _DirectorySyncer()  # directory fsyncs beside the blob's own
        self._fan_digits = self._open_layout()
        self._fan = re.compile(f"^[0-9a-f]{{{self._fan_digits}}}$")

    def _open_layout(self) -> int:
        """The fan width of this store; a new (or still empty) store gets the current layout,
        its fan directories and its LAYOUT file, all durable before the first put."""
        layout = self._objects / LAYOUT
        try:
            text = layout.read_text(encoding="ascii")
        except FileNotFoundError:
            text = ""  # as after a crash between creating the file and syncing its line
        if text:
            found = re.fullmatch(r"fan-digits (\d)\n", text)
            if found is None or int(found.group(1)) not in (FAN_DIGITS, LEGACY_FAN_DIGITS):
                raise ValueError(f"{layout}: unknown blob layout {text[:40]!r}")
            return int(found.group(1))
        if self._objects.is_dir() and any(p.name != LAYOUT for p in self._objects.iterdir()):
            return LEGACY_FAN_DIGITS  # blobs stored before LAYOUT existed
        if not self._objects.is_dir():
            self._objects.mkdir(mode=0o700, parents=True, exist_ok=True)
            _fsync_dir(self.root)
        # LAYOUT first: a crash before the fans are all made leaves fans to make lazily.
        fd = os.open(layout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"fan-digits {FAN_DIGITS}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        for n in range(16**FAN_DIGITS):
            fan = self._objects / f"{n:0{FAN_DIGITS}x}"
            fan.mkdir(mode=0o700, exist_ok=True)
            _fsync_dir(fan)
        _fsync_dir(self._objects)
        return FAN_DIGITS

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError(f"invalid blob key {key[:80]!r}: expected a UID or a hex digest")
        fan = hashlib.sha256(key.encode()).hexdigest()[: self._fan_digits]
        return self._objects / fan / key

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, source: BinaryIO) -> BlobInfo:
        """Store all of `source` under `key`, durably; see the module docstring."""
        path = self._path(key)
        new_directory = False
        try:
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # a fan not made yet (a store in the legacy layout)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            new_directory = True
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            info = self._put_anonymous(directory, path, key, source) if self._anonymous else None
            if info is None:
                info = self._put_named(path, key, source)
                os.fsync(directory)
        finally:
            os.close(directory)
        if new_directory:
            _fsync_dir(self._objects)
        return info

    def _put_anonymous(
        self, directory: int, path: Path, key: str, source: BinaryIO
    ) -> BlobInfo | None:
        """Write an unnamed file (O_TMPFILE), give it its name, then fsync it: on journaling
        file systems one commit then covers the data, the inode and the directory entry, and
        the directory fsync that follows (POSIX asks for it) has little left to do. A crash
        before the fsync leaves at most an unacknowledged blob without an index row, which
        crash recovery removes. None where the system cannot do this (the caller falls back
        to a named temp file, and so does every later put)."""
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=directory)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
            self._anonymous = False
            return None
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                size, sha256 = self._write(key, source, out)
            info = BlobInfo(key, size, sha256)
            try:
                os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=directory)
            except FileExistsError:
                self._check_same(key, info)
                os.fsync(directory)  # the blob found may be one whose name is not durable yet
                return info
            except OSError as error:  # no /proc here
                if error.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                    raise
                self._anonymous = False
                return None
            self._sync_file_and_directory(fd, directory)
            return info
        finally:
            os.close(fd)

    def _sync_file_and_directory(self, fd: int, directory: int) -> None:
        """fsync the blob and its directory at once (two threads): the store needs both durable
        before its index row commits, not one before the other. A crash between them leaves
        either a name without its data or data without a name, both of a blob never
        acknowledged (no index row): crash recovery removes the first, the file system's
        check the second. On a disk where each fsync waits for the device, this halves the
        blob's share of a store's latency."""
        directory_synced = self._syncer.start(directory)
        try:
            os.fsync(fd)
        finally:
            directory_synced()  # its error, if any, fails the put too

    def _put_named(self, path: Path, key: str, source: BinaryIO) -> BlobInfo:
        """The portable way: a named temp file, fsync'd, then linked under its key."""
        fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                size, sha256 = self._write(key, source, out)
                out.flush()
                os.fsync(out.fileno())
            info = BlobInfo(key, size, sha256)
            if not self._publish(temp, path):
                self._check_same(key, info)
            return info
        finally:
            temp.unlink(missing_ok=True)

    def _check_same(self, key: str, info: BlobInfo) -> None:
        """`key` exists already: fine if it holds the same bytes, BlobConflictError if not."""
        existing = self.verify(key)
        if existing.sha256 != info.sha256 or existing.size != info.size:
            raise BlobConflictError(
                f"blob {key} already exists with other bytes; the first copy stays"
            )

    def _write(self, key: str, source: BinaryIO, out: BinaryIO) -> tuple[int, str]:
        if self._key is not None:
            return aead.encrypt_stream(source, out, self._key, key)
        digest = hashlib.sha256()
        size = 0
        while chunk := aead.read_full(source, CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        return size, digest.hexdigest()

    @staticmethod
    def _publish(temp: Path, path: Path) -> bool:
        """Give `temp` the name `path` unless it exists: False when it does."""
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as error:  # a file system without hard links
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if path.exists():
                return False
            os.replace(temp, path)
        return True

    def delete(self, key: str) -> None:
        """Remove the blob `key`, durably; a missing key is not an error."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def sweep_temp(self, *, min_age_seconds: float = 0.0) -> int:
        """Remove temp files a crash left behind (at least `min_age_seconds` old, so a put in
        progress elsewhere can be spared); returns how many were removed."""
        removed = 0
        cutoff = time.time() - min_age_seconds
        for temp in self._objects.glob(f"*/{TEMP_PREFIX}*"):
            try:
                if temp.stat().st_mtime <= cutoff:
                    temp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    # -- reads -----------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        """The stored bytes as a stream (decrypted); FileNotFoundError for a missing key."""
        file = self._path(key).open("rb")
        if self._key is None:
            return file
        return aead.open_decrypting(file, self._key, key)

    def verify(self, key: str) -> BlobInfo:
        """Read the blob through and return its actual size and SHA-256."""
        digest = hashlib.sha256()
        size = 0
        with self.open(key) as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return BlobInfo(key, size, digest.hexdigest())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self) -> Iterator[str]:
        """Every stored key; temp files and anything else that is not a blob are skipped."""
        for fan in sorted(self._objects.iterdir()):
            if not (self._fan.match(fan.name) and fan.is_dir()):
                continue
            for entry in sorted(fan.iterdir()):
                name = entry.name
                if is_valid_key(name) and self._path(name).parent == fan and entry.is_file():
                    yield name
