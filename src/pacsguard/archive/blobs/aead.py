"""Encryption at rest: AES-GCM over fixed-size chunks, so no object sits in memory whole.

File format, version 1 (all integers big-endian)::

    header  = magic "PGBLOB\\x00\\x01" (8) | chunk size in bytes, u32 (4) | salt (16)
    records = AES-GCM(chunk) || tag (16), one per chunk, in order

Every chunk holds `chunk size` plaintext bytes except the last, which holds 1 to
`chunk size` bytes (0 only for an empty object); there is always at least one record.

- Each file has its own key: HKDF-SHA256 of the store key, with the file's random salt and
  `"pacsguard-blob-v1\\0" + blob key` as info. A file moved under another key, or decrypted
  with another store key, fails authentication.
- Chunk `i`'s 96-bit nonce is `i` (11 bytes) followed by 1 for the last chunk, 0 otherwise
  (the STREAM construction): chunks cannot be reordered, dropped, or the file cut short at a
  chunk boundary without failing authentication. Per-file keys make nonce reuse impossible.
- Every record authenticates the header as associated data.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from typing import BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pacsguard.archive.blobs import BlobCorruptError

MAGIC: Final = b"PGBLOB\x00\x01"
TAG: Final = 16
SALT: Final = 16
HEADER: Final = struct.Struct(f">8sI{SALT}s")
#: Plaintext bytes per chunk: 1 MiB.
CHUNK: Final = 1 << 20
#: The largest chunk size a file may announce; a bound on what `open` allocates.
MAX_CHUNK: Final = 16 << 20
_INFO: Final = b"pacsguard-blob-v1\x00"


def check_key(key: bytes) -> None:
    if len(key) not in (16, 24, 32):
        raise ValueError("the blob encryption key must be 16, 24 or 32 bytes (AES-128/192/256)")


def _file_cipher(store_key: bytes, salt: bytes, blob_key: str) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO + blob_key.encode())
    return AESGCM(hkdf.derive(store_key))


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def read_full(source: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of `source` (streams may return short reads)."""
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        part = source.read(wanted)
        if not part:
            break
        parts.append(part)
        wanted -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encrypt_stream(
    source: BinaryIO, out: BinaryIO, store_key: bytes, blob_key: str, *, chunk: int = CHUNK
) -> tuple[int, str]:
    """Encrypt all of `source` into `out`; returns the plaintext's size and SHA-256."""
    header = HEADER.pack(MAGIC, chunk, os.urandom(SALT))
    cipher = _file_cipher(store_key, header[-SALT:], blob_key)
    out.write(header)
    digest = hashlib.sha256()
    size = 0
    index = 0
    current = read_full(source, chunk)
    while True:
        following = read_full(source, chunk) if len(current) == chunk else b""
        last = not following
        digest.update(current)
        size += len(current)
        out.write(cipher.encrypt(_nonce(index, last), current, header))
        if last:
            return size, digest.hexdigest()
        current = following
        index += 1


class ChunkEncryptor:
    """`encrypt_stream` for data that arrives piece by piece: `write` as it comes, `close` at
    the end. Holds at most one chunk plus one piece in memory; writes the same format."""

    def __init__(self, out: BinaryIO, store_key: bytes, blob_key: str, *, chunk: int = CHUNK):
        self._header = HEADER.pack(MAGIC, chunk, os.urandom(SALT))
        self._cipher = _file_cipher(store_key, self._header[-SALT:], blob_key)
        self._out = out
        self._chunk = chunk
        self._index = 0
        self._pending = bytearray()
        out.write(self._header)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add `data`; every full chunk but the newest is sealed and written now (the newest
        may turn out to be the last, whose nonce differs)."""
        self._pending += data
        full = (len(self._pending) - 1) // self._chunk
        if full <= 0:
            return
        with memoryview(self._pending) as view:
            for n in range(full):
                piece = view[n * self._chunk : (n + 1) * self._chunk]
                self._out.write(
                    self._cipher.encrypt(_nonce(self._index, False), piece, self._header)
                )
                self._index += 1
            rest = bytearray(view[full * self._chunk :])
        self._pending = rest

    def close(self) -> None:
        """Seal the last chunk (possibly empty, for an empty object)."""
        last = self._cipher.encrypt(_nonce(self._index, True), bytes(self._pending), self._header)
        self._out.write(last)
        self._pending = bytearray()


class DecryptingReader(io.RawIOBase):
    """The plaintext of one encrypted file, one chunk in memory at a time. Seekable when the
    file is (a seek decrypts the chunk it lands in): parsers such as pydicom seek back."""

    def __init__(self, file: BinaryIO, store_key: bytes, blob_key: str) -> None:
        super().__init__()
        self._file = file
        header = read_full(file, HEADER.size)
        if len(header) != HEADER.size:
            raise BlobCorruptError(f"blob {blob_key}: too short to be an encrypted blob")
        magic, announced, salt = HEADER.unpack(header)
        chunk = int(announced)
        if magic != MAGIC or not 0 < chunk <= MAX_CHUNK:
            raise BlobCorruptError(f"blob {blob_key}: not an encrypted blob (bad header)")
        body = os.fstat(file.fileno()).st_size - HEADER.size
        record = chunk + TAG
        self._records = max(1, -(-body // record))
        if body < TAG or body - (self._records - 1) * record < TAG:
            raise BlobCorruptError(f"blob {blob_key}: truncated")
        self._header = header
        self._chunk = chunk
        self._record = record
        self._size = body - self._records * TAG  # plaintext bytes
        self._cipher = _file_cipher(store_key, salt, blob_key)
        self._blob_key = blob_key
        self._index = 0  # the next chunk to decrypt
        self._position = 0  # in the plaintext
        self._buffer = memoryview(b"")

    @property
    def name(self) -> str:
        """What a parser may show for this stream (pydicom reads `name` of a BufferedReader)."""
        return f"<encrypted {self._blob_key}>"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._file.seekable()

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        index, within = divmod(target, self._chunk)
        self._index = min(index, self._records)
        self._buffer = memoryview(b"")
        if self._index < self._records:
            self._file.seek(HEADER.size + self._index * self._record)
            if within:
                self._buffer = self._decrypt_next()[within:]
        self._position = target
        return target

    def _decrypt_next(self) -> memoryview:
        last = self._index == self._records - 1
        sealed = read_full(self._file, self._record)
        try:
            plain = self._cipher.decrypt(_nonce(self._index, last), sealed, self._header)
        except InvalidTag:
            raise BlobCorruptError(
                f"blob {self._blob_key}: chunk {self._index} failed authentication "
                "(tampered, truncated, or encrypted with another key)"
            ) from None
        self._index += 1
        return memoryview(plain)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buffer:
            if self._index >= self._records:
                return 0
            self._buffer = self._decrypt_next()
        count = min(len(buffer), len(self._buffer))
        buffer[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        self._position += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_decrypting(file: BinaryIO, store_key: bytes, blob_key: str) -> BinaryIO:
    """A buffered plaintext stream over an open encrypted file (closing it closes the file)."""
    try:
        raw = DecryptingReader(file, store_key, blob_key)
    except BaseException:
        file.close()
        raise
    return io.BufferedReader(raw, buffer_size=CHUNK)
