"""WADO-RS of compressed instances (PS3.18 8.7.3): decompressed for clients that want
uncompressed syntaxes (the default), as stored with ``transfer-syntax=*``, frames as stored
or decoded, the decoded-size limit as a 406 with its reason, and metadata from the header only.
Pixels are compared with pydicom's own decompression (the oracle)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from tests.compressed import KINDS, compressed_file

from ._multipart import read_parts
from .conftest import WebArchive, start_web
from .test_dicomweb import stow

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
LIMIT = 2 * 1024 * 1024


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebArchive]:
    running = start_web(tmp_path, **{"server.max_decompressed_bytes": LIMIT})
    try:
        yield running
    finally:
        running.archive.stop()


def url(ds: Dataset) -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def oracle(data: bytes) -> Dataset:
    ds = dcmread(io.BytesIO(data))
    ds.decompress(generate_instance_uid=False)
    return ds


def accept(part: str, syntax: str | None = None) -> dict[str, str]:
    value = f'multipart/related; type="{part}"'
    return {"Accept": value + (f"; transfer-syntax={syntax}" if syntax else "")}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_compressed_instances_come_decompressed_or_as_stored(
    web: WebArchive, tmp_path: Path, kind: str
) -> None:
    path = compressed_file(kind, tmp_path)
    data = path.read_bytes()
    stored = dcmread(path)
    assert stow(web, [path]).status_code == 200
    expected = oracle(data)
    with web.client("reader") as client:
        default = client.get(url(stored), headers=accept("application/dicom"))
        implicit = client.get(url(stored), headers=accept("application/dicom", IMPLICIT))
        as_stored = client.get(url(stored), headers=accept("application/dicom", "*"))
        named = client.get(url(stored), headers=accept("application/dicom", KINDS[kind][0]))
        study = client.get(f"/studies/{stored.StudyInstanceUID}")
    for answer, syntax in ((default, EXPLICIT), (implicit, IMPLICIT), (study, EXPLICIT)):
        assert answer.status_code == 200, answer.text
        ((part_type, body),) = read_parts(answer)
        assert f"transfer-syntax={syntax}" in part_type.replace('"', "")
        got = dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == syntax
        assert bytes(got.PixelData) == bytes(expected.PixelData)
        assert got.PhotometricInterpretation == expected.PhotometricInterpretation
        assert got.SOPInstanceUID == stored.SOPInstanceUID
    for answer in (as_stored, named):
        assert [p for _, p in read_parts(answer)] == [data]  # byte for byte


def test_frames_as_stored_or_decoded_and_bulk_data(web: WebArchive, tmp_path: Path) -> None:
    path = compressed_file("jpeg-baseline", tmp_path)
    stored = dcmread(path)
    assert stow(web, [path]).status_code == 200
    fragments = list(generate_frames(stored.PixelData, number_of_frames=3))
    decoded = oracle(path.read_bytes()).pixel_array
    with web.client("reader") as client:
        default = client.get(url(stored) + "/frames/3,1")
        jpeg = client.get(url(stored) + "/frames/2", headers=accept("image/jpeg"))
        any_syntax = client.get(
            url(stored) + "/frames/2", headers=accept("application/octet-stream", "*")
        )
        jp2 = client.get(url(stored) + "/frames/2", headers=accept("image/jp2"))
        bulk = client.get(url(stored) + "/bulkdata/7FE00010")
        bulk_stored = client.get(url(stored) + "/bulkdata/7FE00010", headers=accept("image/jpeg"))
        metadata = client.get(url(stored) + "/metadata")
    assert [p for _, p in read_parts(default)] == [decoded[2].tobytes(), decoded[0].tobytes()]
    ((jpeg_type, jpeg_frame),) = read_parts(jpeg)
    assert jpeg_type.startswith("image/jpeg") and jpeg_frame == fragments[1]
    assert [p for _, p in read_parts(any_syntax)] == [fragments[1]]
    assert jp2.status_code == 406 and "image/jpeg" in jp2.text
    assert [p for _, p in read_parts(bulk)] == [decoded.tobytes()]
    assert [p for _, p in read_parts(bulk_stored)] == fragments  # a part per frame
    (item,) = metadata.json()
    assert item["7FE00010"]["BulkDataURI"].endswith(url(stored) + "/bulkdata/7FE00010")
    assert item["00280004"]["Value"] == ["YBR_FULL_422"]  # as stored: metadata is not decoded
    assert item["00080018"]["Value"] == [stored.SOPInstanceUID]


def test_over_the_decompression_limit_is_406_with_the_reason(
    web: WebArchive, tmp_path: Path
) -> None:
    big = compressed_file("rle", tmp_path, rows=512, columns=512)  # 2.25 MiB decoded
    small = compressed_file("rle", tmp_path)
    assert stow(web, [big, small]).status_code == 200
    ds = dcmread(big)
    with web.client("reader") as client:
        refused = client.get(url(ds))
        frames = client.get(url(ds) + "/frames/1,2,3")
        frame = client.get(url(ds) + "/frames/2")  # 768 KiB decoded: within the limit
        as_stored = client.get(url(ds), headers=accept("application/dicom", "*"))
        frame_stored = client.get(url(ds) + "/frames/1", headers=accept("image/dicom-rle"))
    assert refused.status_code == 406
    assert "over the 2097152 bytes allowed" in refused.text
    assert "transfer-syntax=*" in refused.text
    assert frames.status_code == 406 and "max_decompressed_bytes" in frames.text
    assert [p for _, p in read_parts(as_stored)] == [big.read_bytes()]
    assert frame_stored.status_code == 200
    assert [p for _, p in read_parts(frame)] == [oracle(big.read_bytes()).pixel_array[1].tobytes()]
    audit = "\n".join(web.audit_lines())
    assert "406" in audit
