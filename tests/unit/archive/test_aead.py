"""The at-rest chunk format: written piece by piece (`ChunkEncryptor`, what staging uses) it is
the format `encrypt_stream` writes, and reading it back can seek (pydicom seeks)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from pacsguard.archive.blobs import BlobCorruptError, aead

KEY = bytes(range(32))
CHUNK = 16


def _payload(size: int) -> bytes:
    return bytes(random.Random(size).randrange(256) for _ in range(size))


def _write_in_pieces(path: Path, data: bytes, pieces: list[int]) -> None:
    with path.open("wb") as out:
        encryptor = aead.ChunkEncryptor(out, KEY, "x", chunk=CHUNK)
        offset = 0
        for size in pieces:
            encryptor.write(data[offset : offset + size])
            offset += size
        encryptor.write(data[offset:])
        encryptor.close()


def _read(path: Path) -> bytes:
    with aead.open_decrypting(path.open("rb"), KEY, "x") as stream:
        return stream.read()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("pieces", [[], [1] * 40, [CHUNK] * 3, [100], [7, 0, 9, 33]])
def test_piecewise_encryption_is_the_stream_format(
    tmp_path: Path, size: int, pieces: list[int]
) -> None:
    data = _payload(size)
    _write_in_pieces(tmp_path / "pieces", data, pieces)
    with (tmp_path / "stream").open("wb") as out:
        aead.encrypt_stream(io.BytesIO(data), out, KEY, "x", chunk=CHUNK)
    assert _read(tmp_path / "pieces") == data
    assert (tmp_path / "pieces").stat().st_size == (tmp_path / "stream").stat().st_size


def test_seeking_reads_the_right_plaintext(tmp_path: Path) -> None:
    data = _payload(10 * CHUNK + 3)
    _write_in_pieces(tmp_path / "f", data, [])
    rng = random.Random(7)
    with aead.open_decrypting((tmp_path / "f").open("rb"), KEY, "x") as stream:
        for _ in range(200):
            where = rng.randrange(len(data) + 5)
            stream.seek(where)
            assert stream.tell() == where
            count = rng.randrange(3 * CHUNK)
            assert stream.read(count) == data[where : where + count]
        stream.seek(-4, io.SEEK_END)
        assert stream.read() == data[-4:]
        stream.seek(2)
        stream.seek(3, io.SEEK_CUR)
        assert stream.read(3) == data[5:8]
        with pytest.raises(ValueError, match="negative"):
            stream.seek(-1)


def test_a_tampered_chunk_fails_when_sought_to(tmp_path: Path) -> None:
    data = _payload(4 * CHUNK)
    path = tmp_path / "f"
    _write_in_pieces(path, data, [])
    raw = bytearray(path.read_bytes())
    raw[aead.HEADER.size + 2 * (CHUNK + aead.TAG) + 1] ^= 1  # inside chunk 2
    path.write_bytes(bytes(raw))
    with aead.open_decrypting(path.open("rb"), KEY, "x") as stream:
        stream.seek(CHUNK)
        assert stream.read(CHUNK) == data[CHUNK : 2 * CHUNK]
        with pytest.raises(BlobCorruptError, match="chunk 2"):
            stream.seek(2 * CHUNK + 3)
            stream.read(1)
