"""Staging for received objects too large to keep in memory: in the data folder, never in clear.

A front end that receives an object bigger than it wants to hold (the DIMSE receiver past
2 MiB) writes it here, and `ArchiveService.store_instance` reads it back. Each staged file:

- lives in the staging folder (`<data_dir>/tmp`, mode 0700), never in the process-wide temp
  folder;
- has no name: Linux `O_TMPFILE`, or where that is not available a file created 0600 and
  unlinked at once. Closing it, or a crash, frees it; nothing is left to clean up, and the
  folder is swept at start-up anyway (a crash between create and unlink);
- holds AES-256-GCM chunks (the blob format, `blobs.aead`) under a random key that exists
  only in this process's memory: the bytes on disk are unreadable even while the file exists.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Final, Protocol, cast

from pacsguard.archive.blobs import aead

log = logging.getLogger(__name__)

#: The staging folder's name inside the data folder.
STAGING_FOLDER: Final = "tmp"
#: Name prefix of a staged file in the moment between creating and unlinking it.
PREFIX: Final = ".staged-"
_LABEL: Final = "staged"


class ObjectSource(Protocol):
    """A received object that is not in memory: its size and a fresh stream of its bytes."""

    @property
    def size(self) -> int: ...

    def open(self) -> BinaryIO: ...


class StagingArea:
    """The staging folder: created 0700 if missing, swept of leftovers when opened."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._anonymous = hasattr(os, "O_TMPFILE")
        swept = self.sweep()
        if swept:
            log.warning("removed %d staged files left by an earlier run", swept)

    def sweep(self) -> int:
        """Remove what a crash can leave: named staged files (never open at start-up)."""
        removed = 0
        for path in self.root.glob(f"{PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    def create(self) -> StagedWriter:
        """A new, empty, unnamed staged file to write an object into."""
        return StagedWriter(self._open_unnamed())

    def _open_unnamed(self) -> int:
        if self._anonymous:
            try:
                return os.open(self.root, os.O_TMPFILE | os.O_RDWR, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._anonymous = False  # this file system cannot: named and unlinked
        path = self.root / f"{PREFIX}{secrets.token_hex(8)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        path.unlink()
        return fd


class StagedWriter:
    """Receives an object's bytes and encrypts them into an unnamed file; `finish` hands over
    a `StagedObject`. Bytes written with `keep=False` (past the largest object the archive
    takes) are counted, not kept, so the service sees the size it must refuse. A failed write
    (a full disk) stops the writing too: the object's size then raises, which the service
    answers with out-of-resources."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._key = secrets.token_bytes(32)
        self._file: BinaryIO = open(fd, "wb", buffering=aead.CHUNK, closefd=False)  # noqa: SIM115
        self._encryptor = aead.ChunkEncryptor(self._file, self._key, _LABEL)
        self._size = 0
        self._complete = True
        self._error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview, *, keep: bool = True) -> None:
        self._size += len(data)
        if not keep:
            self._complete = False
        if self._complete and self._error is None:
            try:
                self._encryptor.write(data)
            except OSError as exc:
                self._failed(exc)

    def _failed(self, error: OSError) -> None:
        if self._error is None:
            log.error("staging a received object failed: %s", error.strerror or error)
            self._error = error

    def finish(self) -> StagedObject:
        """Seal the last chunk; the file is then read-only, through `StagedObject.open`."""
        if self._complete and self._error is None:
            try:
                self._encryptor.close()
                self._file.flush()
            except OSError as exc:
                self._failed(exc)
        with contextlib.suppress(OSError):  # what did not flush is already an error above
            self._file.close()
        staged = StagedObject(
            self._fd, self._key, self._size, complete=self._complete, error=self._error
        )
        self._fd = -1
        return staged

    def discard(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._file.close()
            os.close(self._fd)
            self._fd = -1


class StagedObject:
    """A staged object, readable any number of times (each `open` starts at byte 0) until
    `discard`, which frees the file."""

    def __init__(
        self, fd: int, key: bytes, size: int, *, complete: bool, error: OSError | None = None
    ) -> None:
        self._fd = fd
        self._key = key
        self._size = size
        self._error = error
        self.complete = complete

    @property
    def size(self) -> int:
        """Bytes received, including any counted but not kept past the limit. Raises OSError
        when the object could not be staged (its bytes are not all there)."""
        if self._error is not None:
            raise OSError(self._error.errno, f"the object could not be staged: {self._error}")
        return self._size

    def open(self) -> BinaryIO:
        if self._fd < 0:
            raise ValueError("the staged object was discarded")
        if not self.complete or self._error is not None:
            raise ValueError("the staged object's bytes were not all kept (size limit, full disk)")
        reader = cast(BinaryIO, _PositionalReader(self._fd))
        return aead.open_decrypting(reader, self._key, _LABEL)

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _PositionalReader(io.RawIOBase):
    """Reads a shared descriptor at its own offset (pread), so that readers never disturb
    each other; closing it leaves the descriptor open (its StagedObject owns it)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._offset = offset
        elif whence == io.SEEK_CUR:
            self._offset += offset
        else:
            self._offset = os.fstat(self._fd).st_size + offset
        return self._offset

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.pread(self._fd, len(buffer), self._offset)
        buffer[: len(data)] = data
        self._offset += len(data)
        return len(data)
