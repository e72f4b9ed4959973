"""`service.pixels` over encrypted blobs: the layout of a stored instance, its frames, and
decompression, with pydicom as the oracle (its `Dataset.decompress`, `encaps.generate_frames`).
Instances are synthetic (tests/compressed.py), encoded by dcmtk and pydicom's encoders."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless

from pacsguard.archive.blobs.folder import FolderBlobStore
from pacsguard.archive.service import pixels
from tests.compressed import KINDS, compressed_file, uncompressed


@pytest.fixture
def store(tmp_path: Path) -> FolderBlobStore:
    return FolderBlobStore(tmp_path / "blobs", encryption_key=os.urandom(32))


def put(store: FolderBlobStore, data: bytes) -> str:
    key = dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    store.put(key, io.BytesIO(data))
    return str(key)


def oracle(data: bytes) -> Dataset:
    ds = dcmread(io.BytesIO(data))
    ds.decompress(generate_instance_uid=False)
    return ds


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("target", pixels.UNCOMPRESSED)
def test_decompressed_instances_match_pydicom(
    kind: str, target: str, tmp_path: Path, store: FolderBlobStore
) -> None:
    data = compressed_file(kind, tmp_path).read_bytes()
    key = put(store, data)
    with store.open(key) as stream:
        layout = pixels.read_layout(stream)
    assert layout.encapsulated and layout.transfer_syntax == KINDS[kind][0]
    pixels.check_decodable(layout, 1 << 30)
    pieces = pixels.decompressed_pieces(lambda: store.open(key), layout, target, part10=True)
    reader = pixels.DecompressedReader(pieces, target)
    out = b"".join(iter(lambda: reader.read(1000), b""))
    mine, expected = dcmread(io.BytesIO(out)), oracle(data)
    assert mine.file_meta.TransferSyntaxUID == target
    assert bytes(mine.PixelData) == bytes(expected.PixelData)
    assert np.array_equal(mine.pixel_array, expected.pixel_array)
    assert mine.PhotometricInterpretation == expected.PhotometricInterpretation
    assert mine.SOPInstanceUID == dcmread(io.BytesIO(data)).SOPInstanceUID
    assert mine.NumberOfFrames == 3
    if KINDS[kind][1]:  # colour: RGB, colour-by-pixel (JPEG baseline was YBR_FULL_422)
        assert mine.PhotometricInterpretation == "RGB" and mine.PlanarConfiguration == 0
    if kind == "jpeg-baseline":
        assert dcmread(io.BytesIO(data)).PhotometricInterpretation == "YBR_FULL_422"
        assert mine.LossyImageCompression == "01"
        assert "ISO_10918_1" in str(mine.LossyImageCompressionMethod)
    else:
        assert mine.get("LossyImageCompression") in (None, "00")


@pytest.mark.parametrize("kind", ["jpeg-baseline", "jpeg2000", "rle"])
def test_frames_as_stored_and_decoded(kind: str, tmp_path: Path, store: FolderBlobStore) -> None:
    data = compressed_file(kind, tmp_path).read_bytes()
    key = put(store, data)
    stored = dcmread(io.BytesIO(data))
    expected = list(generate_frames(stored.PixelData, number_of_frames=3))
    decoded = oracle(data).pixel_array
    with store.open(key) as stream:
        layout = pixels.read_layout(stream)
        for number in (3, 1, 2):
            assert pixels.encapsulated_frame(stream, layout, number) == expected[number - 1]
            frame, described = pixels.decode_frame(stream, layout, number)
            assert frame == decoded[number - 1].tobytes()
            assert described["photometric_interpretation"] == "RGB"


def test_the_decoded_size_limit_says_why(tmp_path: Path, store: FolderBlobStore) -> None:
    data = compressed_file("rle", tmp_path, rows=256, columns=256).read_bytes()
    with store.open(put(store, data)) as stream:
        layout = pixels.read_layout(stream)
    assert layout.decoded_frame_bytes() * layout.frame_count == 256 * 256 * 3 * 3
    pixels.check_decodable(layout, 256 * 256 * 9)
    with pytest.raises(pixels.CannotDecode, match=r"589824 bytes, over the 589823"):
        pixels.check_decodable(layout, 256 * 256 * 9 - 1)


def test_native_layout_frames_and_what_follows_the_pixel_data(
    tmp_path: Path, store: FolderBlobStore
) -> None:
    ds = uncompressed(rows=32, columns=16, frames=4, rgb=False, bits=16)
    ds.DataSetTrailingPadding = b"\x00" * 6  # (FFFC,FFFC), after the pixel data
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    key = put(store, buffer.getvalue())
    size = 32 * 16 * 2
    with store.open(key) as stream:
        layout = pixels.read_layout(stream)
        assert not layout.encapsulated and layout.length == 4 * size
        assert "PixelData" not in layout.header and layout.header.Rows == 32
        assert layout.pixel_vr == "OW"
        assert bytes(layout.tail.DataSetTrailingPadding) == b"\x00" * 6
        for number in (4, 1):
            frame = pixels.native_frame(stream, layout, number)
            assert frame == ds.PixelData[(number - 1) * size : number * size]
        with pytest.raises(pixels.CannotDecode, match="not compressed"):
            pixels.check_decodable(layout, 1 << 30)
    with store.open(key) as stream:  # small pixel data can be read inline
        small = pixels.read_layout(stream, inline_up_to=4 * size)
    assert small.header.PixelData == ds.PixelData


def test_implicit_little_endian_and_no_pixel_data(tmp_path: Path, store: FolderBlobStore) -> None:
    ds = uncompressed(frames=1, rgb=False, bits=16)
    ds.file_meta.TransferSyntaxUID = pixels.IMPLICIT_LE
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with store.open(put(store, buffer.getvalue())) as stream:
        layout = pixels.read_layout(stream)
    assert layout.pixel_vr == "OW" and layout.length == len(ds.PixelData)
    del ds.PixelData
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with store.open(put(store, buffer.getvalue())) as stream:
        bare = pixels.read_layout(stream)
    assert bare.pixel_tag is None and bare.header.Rows == 64


class CountingFile(io.FileIO):
    """The encrypted file, counting the bytes read from disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = super().read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = super().readinto(buffer)
        self.count += count or 0
        return count or 0


def test_header_and_frames_read_only_their_chunks(tmp_path: Path) -> None:
    """A 64 MiB multi-frame instance: its layout reads the chunks around the header and the
    pixel data's end (1 MiB each), a frame its own range: never the whole blob."""
    key_bytes = os.urandom(32)
    store = FolderBlobStore(tmp_path / "blobs", encryption_key=key_bytes)
    frames, rows, columns = 128, 512, 512  # 512 KiB per frame
    ds = uncompressed(rows=rows, columns=columns, frames=1, rgb=False, bits=16)
    ds.NumberOfFrames = frames
    ds.PixelData = os.urandom(rows * columns * 2) * frames
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    key = put(store, buffer.getvalue())
    path = next((tmp_path / "blobs" / "objects").glob(f"*/{key}"))
    assert path.stat().st_size > 64 * 1024 * 1024
    from pacsguard.archive.blobs import aead

    raw = CountingFile(path)
    with aead.open_decrypting(raw, key_bytes, key) as stream:
        layout = pixels.read_layout(stream)
        after_layout = raw.count
        frame = pixels.native_frame(stream, layout, 77)
    assert after_layout < 3 * aead.CHUNK + 4096, after_layout
    assert raw.count - after_layout < 512 * 1024 + 2 * aead.CHUNK + 4096
    assert frame == ds.PixelData[76 * 512 * 1024 : 77 * 512 * 1024]


@pytest.mark.parametrize(
    ("syntax", "options", "method"),
    [
        (JPEG2000, {"j2k_cr": [10]}, "ISO_15444_1"),  # irreversible 9-7 wavelet
        (JPEG2000Lossless, {}, None),
        (JPEGLSNearLossless, {"jls_error": 2}, "ISO_14495_1"),
        (JPEGLSNearLossless, {"jls_error": 0}, None),
        (JPEGLSLossless, {}, None),
    ],
)
def test_lossy_compression_is_read_from_the_code_stream(
    syntax: str, options: dict[str, object], method: str | None, store: FolderBlobStore
) -> None:
    ds = uncompressed(rgb=False, bits=16)
    ds.compress(syntax, **options)
    assert "LossyImageCompression" not in ds  # pydicom's encoders do not set it
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    key = put(store, data)
    frame = next(generate_frames(ds.PixelData, number_of_frames=3))
    assert pixels.lossy_method(syntax, frame) == method
    with store.open(key) as stream:
        layout = pixels.read_layout(stream)
    pieces = pixels.decompressed_pieces(
        lambda: store.open(key), layout, pixels.EXPLICIT_LE, part10=True
    )
    out = dcmread(io.BytesIO(b"".join(pieces)))
    assert out.get("LossyImageCompression") == ("01" if method else None)
    assert out.get("LossyImageCompressionMethod") == method
    assert bytes(out.PixelData) == bytes(oracle(data).PixelData)
