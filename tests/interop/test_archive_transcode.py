"""Compressed instances through clients nobody here wrote (issue 10): stored by dcmtk
`storescu` in their own syntaxes (JPEG baseline, JPEG lossless, JPEG 2000, JPEG-LS, RLE),
fetched by dcmtk `getscu` proposing only uncompressed syntaxes (C-GET: the service
decompresses), by `movescu` to a `storescp` that accepts only uncompressed ones (C-MOVE), and by
dicomweb-client over WADO-RS (instances and frames, decompressed by default). Pixels are
compared with pydicom's own decompression. Synthetic images only (tests/compressed.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from tests.compressed import KINDS, compressed_file
from tests.integration.web._multipart import read_parts, related_body
from tests.integration.web.conftest import WebArchive, start_web

from .conftest import require_tools
from .peers import running_storescp
from .test_archive_dicomweb import dcmtk, dicomweb

pytestmark = pytest.mark.interop

UNCOMPRESSED = {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebArchive]:
    running = start_web(tmp_path, tester=True)
    try:
        yield running
    finally:
        running.archive.stop()


@pytest.fixture
def compressed(tmp_path: Path) -> dict[str, Path]:
    directory = tmp_path / "compressed"
    directory.mkdir()
    return {kind: compressed_file(kind, directory) for kind in sorted(KINDS)}


def decoded(path: Path) -> Dataset:
    ds = dcmread(path)
    ds.decompress(generate_instance_uid=False)
    return ds


#: storescu's option that proposes each kind's syntax (with the uncompressed ones after it).
PROPOSE = {
    "jpeg-baseline": "-xy",
    "jpeg-lossless": "-xs",
    "jpeg2000": "-xv",
    "jpeg-ls": "-xt",
    "rle": "-xr",
}


def store_with_storescu(web: WebArchive, files: dict[str, Path]) -> None:
    """Each file in its own compressed syntax (storescu converts nothing: it proposes that
    syntax first, and the archive accepts it)."""
    require_tools("storescu")
    for kind, path in files.items():
        stored = dcmtk(
            "storescu", PROPOSE[kind], "-aet", "TESTER", "-aec", "PACSGUARD",
            "127.0.0.1", str(web.dimse_port), str(path),
        )  # fmt: skip
        assert stored.ok, stored.log[-3000:]
        ds = dcmread(path, stop_before_pixels=True)
        url = (
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        with web.client("reader") as client:
            as_stored = client.get(
                url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                              "transfer-syntax=*"},
            )  # fmt: skip
        ((part_type, _),) = read_parts(as_stored)
        assert f"transfer-syntax={KINDS[kind][0]}" in part_type.replace('"', ""), part_type


def test_getscu_proposing_uncompressed_only_gets_decompressed_instances(
    web: WebArchive, compressed: dict[str, Path], tmp_path: Path
) -> None:
    require_tools("getscu")
    files = list(compressed.values())
    store_with_storescu(web, compressed)
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        got = dcmtk(
            "getscu", "-S", "-k", "QueryRetrieveLevel=IMAGE",
            "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
            "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
            "-k", f"SOPInstanceUID={ds.SOPInstanceUID}",
            "+x=",  # accept uncompressed syntaxes only for the C-STOREs back (its default)
            "-od", str(fetched), "-aet", "TESTER", "-aec", "PACSGUARD",
            "127.0.0.1", str(web.dimse_port),
        )  # fmt: skip
        assert got.returncode == 0, got.log[-3000:]
    received = {str(d.SOPInstanceUID): d for d in map(dcmread, fetched.iterdir())}
    assert len(received) == len(files)
    for kind, path in compressed.items():
        expected = decoded(path)
        got_ds = received[str(expected.SOPInstanceUID)]
        assert got_ds.file_meta.TransferSyntaxUID in UNCOMPRESSED, kind
        assert bytes(got_ds.PixelData) == bytes(expected.PixelData), kind
        assert got_ds.PhotometricInterpretation == expected.PhotometricInterpretation, kind
    jpeg = received[str(dcmread(compressed["jpeg-baseline"]).SOPInstanceUID)]
    assert jpeg.PhotometricInterpretation == "RGB" and jpeg.LossyImageCompression == "01"


def test_movescu_into_a_storescp_that_accepts_uncompressed_only(
    compressed: dict[str, Path], tmp_path: Path
) -> None:
    require_tools("storescu", "movescu", "storescp")
    chosen = {k: compressed[k] for k in ("jpeg2000", "jpeg-ls", "jpeg-baseline")}
    files = list(chosen.values())
    # storescp accepts Explicit and Implicit VR Little Endian only (+x=, its default)
    with running_storescp(tmp_path / "dest", aet="PLAINDEST", options=("+x=",)) as dest:
        destination = f"""
[[ae]]
ae_title = "{dest.aet}"
auth = "address"
address = "127.0.0.1"
port = {dest.port}
move_destination = true
permissions = []
"""
        web = start_web(tmp_path / "archive", tester=True, extra_config=destination)
        try:
            store_with_storescu(web, chosen)
            for path in files:
                ds = dcmread(path, stop_before_pixels=True)
                moved = dcmtk(
                    "movescu", "-S", "-aet", "TESTER", "-aec", "PACSGUARD", "-aem", dest.aet,
                    "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                    "127.0.0.1", str(web.dimse_port),
                )  # fmt: skip
                assert moved.ok, moved.log[-3000:]
        finally:
            web.archive.stop()
        received = {
            str(d.SOPInstanceUID): d
            for d in map(dcmread, (p for p in dest.output_dir.rglob("*") if p.is_file()))
        }
    assert len(received) == len(files)
    for path in files:
        expected = decoded(path)
        got = received[str(expected.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID in UNCOMPRESSED
        assert bytes(got.PixelData) == bytes(expected.PixelData)


def test_dicomweb_client_gets_decompressed_instances_and_frames(
    web: WebArchive, compressed: dict[str, Path]
) -> None:
    client = dicomweb(web)
    datasets = [dcmread(p) for p in compressed.values()]
    answer = client.store_instances(datasets)
    assert "FailedSOPSequence" not in answer
    for kind, path in compressed.items():
        expected = decoded(path)
        study, series, sop = (
            expected.StudyInstanceUID,
            expected.SeriesInstanceUID,
            expected.SOPInstanceUID,
        )
        instance = client.retrieve_instance(
            study, series, sop, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),)
        )
        assert instance.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", kind
        assert bytes(instance.PixelData) == bytes(expected.PixelData), kind
        as_stored = client.retrieve_instance(study, series, sop)  # its default: transfer-syntax=*
        assert as_stored.file_meta.TransferSyntaxUID == KINDS[kind][0], kind
        assert bytes(as_stored.PixelData) == bytes(dcmread(path).PixelData), kind
        frames = client.retrieve_instance_frames(study, series, sop, frame_numbers=[2, 3])
        assert frames == [f.tobytes() for f in expected.pixel_array[1:3]], kind
    jpeg = dcmread(compressed["jpeg-baseline"])
    stored_frames = client.retrieve_instance_frames(
        jpeg.StudyInstanceUID,
        jpeg.SeriesInstanceUID,
        jpeg.SOPInstanceUID,
        frame_numbers=[1],
        media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),),
    )
    assert stored_frames == list(generate_frames(jpeg.PixelData, number_of_frames=3))[:1]


def test_getscu_over_the_decompression_limit_fails_with_the_reason(tmp_path: Path) -> None:
    require_tools("getscu")
    web = start_web(tmp_path / "archive", tester=True, **{"server.max_decompressed_bytes": 2**20})
    try:
        big = compressed_file("rle", tmp_path, rows=512, columns=512)  # 2.25 MiB decoded
        with web.client() as client:
            body, content_type = related_body([big.read_bytes()])
            stored = client.post(
                "/studies",
                content=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
        assert stored.status_code == 200, stored.text
        ds = dcmread(big, stop_before_pixels=True)
        fetched = tmp_path / "fetched"
        fetched.mkdir()
        got = dcmtk(
            "getscu", "-d", "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "+x=",
            "-od", str(fetched), "-aet", "TESTER", "-aec", "PACSGUARD",
            "127.0.0.1", str(web.dimse_port),
        )  # fmt: skip
    finally:
        web.archive.stop()
    assert not list(fetched.iterdir())
    assert "0xa702" in got.log.lower() or "a702" in got.log.lower(), got.log[-3000:]
    assert "decompressed it would be 2359296 bytes" in got.log, got.log[-3000:]


def test_getscu_of_pixel_data_that_does_not_decode_is_a_failed_sub_operation(
    tmp_path: Path, compressed: dict[str, Path]
) -> None:
    """Found before anything of the instance is sent (no C-STORE begun, none cut off)."""
    require_tools("getscu")
    broken = dcmread(compressed["jpeg-baseline"])
    broken.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"] * 3)
    path = tmp_path / "broken.dcm"
    broken.save_as(path, enforce_file_format=True)
    good = compressed["rle"]
    web = start_web(tmp_path / "archive", tester=True)
    try:
        body, content_type = related_body([path.read_bytes(), good.read_bytes()])
        with web.client() as client:
            stored = client.post(
                "/studies",
                content=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
        assert stored.status_code == 200, stored.text
        fetched = tmp_path / "fetched"
        fetched.mkdir()
        outcomes = []
        for ds in (broken, dcmread(good, stop_before_pixels=True)):
            arguments = [
                "-d", "-S", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "+x=",
                "-od", str(fetched), "-aet", "TESTER", "-aec", "PACSGUARD",
                "127.0.0.1", str(web.dimse_port),
            ]  # fmt: skip
            outcomes.append(dcmtk("getscu", *arguments))
    finally:
        web.archive.stop()
    failed, worked = outcomes
    assert "could not be decoded" in failed.log, failed.log[-3000:]
    # a failed sub-operation with the reason, in a final response (getscu then aborts itself
    # when it finds the Failed SOP Instance UID List after it, which it does not read)
    assert "DIMSE Status                  : 0xa702" in failed.log, failed.log[-3000:]
    assert "Failed Suboperations          : 1" in failed.log, failed.log[-3000:]
    assert [dcmread(p).SOPInstanceUID for p in fetched.iterdir()] == [
        dcmread(good, stop_before_pixels=True).SOPInstanceUID
    ], worked.log[-3000:]
