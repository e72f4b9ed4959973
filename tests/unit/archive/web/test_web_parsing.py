"""The web front end's pure parts: media types, QIDO-RS parameters, STOW-RS Content-Type."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from pacsguard.archive.web._errors import WebError
from pacsguard.archive.web._media import parse_accept, wants, wants_multipart
from pacsguard.archive.web._qido import DEFAULT_FIELDS, parse_search, warning_header
from pacsguard.archive.web._stow import check_request_type
from pacsguard.archive.web._wado import parse_frames
from pacsguard.dicom.levels import Level


def test_accept_ranges_and_multipart_types() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*, application/json;q=0'
    )
    assert [r.type for r in ranges] == ["multipart/related"]
    chosen = wants_multipart(ranges, "application/dicom")
    assert chosen is not None and chosen.params["transfer-syntax"] == "*"
    assert wants_multipart(ranges, "application/octet-stream") is None
    assert not wants(ranges, "application/json")  # q=0 means "not this"
    assert wants(parse_accept(None), "application/dicom+json")
    assert wants(parse_accept("application/*"), "application/dicom+json")
    assert wants_multipart(
        parse_accept('multipart/related; type="application/*"'), "application/dicom"
    )


def test_qido_parameters_become_one_query() -> None:
    params = QueryParams(
        "PatientName=DOE*&00080020=20200101-&StudyInstanceUID=1.2.3,1.2.4&limit=5&offset=10"
        "&includefield=00081030,PatientSex&fuzzymatching=true"
    )
    search = parse_search(Level.STUDY, {}, params)
    keys = search.request.keys
    assert keys["PatientName"] == "DOE*"
    assert keys["StudyDate"] == "20200101-"
    assert keys["StudyInstanceUID"] == "1.2.3\\1.2.4"  # UID list matching
    assert keys["StudyDescription"] == "" and keys["PatientSex"] == ""
    assert set(DEFAULT_FIELDS[Level.STUDY]) <= keys.keys()
    assert (search.request.offset, search.request.limit) == (10, 5)
    assert any("fuzzymatching" in w for w in search.warnings)


def test_path_uids_fix_the_parent_keys() -> None:
    search = parse_search(
        Level.IMAGE, {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3"}, QueryParams("")
    )
    assert search.request.keys["StudyInstanceUID"] == "1.2"
    assert search.request.keys["SeriesInstanceUID"] == "1.3"
    assert {"SOPInstanceUID", "Modality", "PatientID"} <= search.request.keys.keys()


def test_unsupported_matching_is_a_warning_not_an_error() -> None:
    search = parse_search(Level.STUDY, {}, QueryParams("InstitutionName=X&ModalitiesInStudy=CT"))
    header = warning_header(search.warnings)["Warning"]
    assert header.startswith('299 pacsguard: "')
    assert "InstitutionName" in header and "ModalitiesInStudy" in header


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=1&limit=2",
        "offset=x",
        "Nonsense=1",
        "PatientID=1&00100020=2",
        "fuzzymatching=yes",
        "includefield=ZZZZZZZZ",
        "00100020.00100010=1",
    ],
)
def test_bad_parameters_are_400(query: str) -> None:
    with pytest.raises(WebError) as refused:
        parse_search(Level.STUDY, {}, QueryParams(query))
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=x', 415),
        ("multipart/form-data; boundary=x", 415),
        ('multipart/related; type="application/dicom"', 400),
        ('multipart/related; type="application/dicom"; boundary=' + "x" * 201, 400),
    ],
)
def test_stow_content_types(content_type: str | None, status: int) -> None:
    with pytest.raises(WebError) as refused:
        check_request_type(content_type)
    assert refused.value.status == status


def test_stow_boundary_is_read_as_mime_says() -> None:
    assert (
        check_request_type('Multipart/Related; Type="Application/DICOM"; boundary="a b"') == b"a b"
    )


@pytest.mark.parametrize("frames", ["0", "1,,2", "a", "-1", "1;2", ""])
def test_bad_frame_lists(frames: str) -> None:
    with pytest.raises(WebError):
        parse_frames(frames)


def test_frame_lists() -> None:
    assert parse_frames("1,3,2") == [1, 3, 2]


def test_stow_takes_the_boundary_orthanc_sends() -> None:
    # orthanc-dicomweb 1.7: two UUIDs joined by "-", 73 characters (RFC 2046 says at most 70)
    boundary = "0f3c5c2e-8d8a-4c1e-9a7e-3b2f4f6d7e8a-5b1d2c3e-4f5a-6b7c-8d9e-0a1b2c3d4e5f"
    assert len(boundary) == 73
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    assert check_request_type(content_type) == boundary.encode()
