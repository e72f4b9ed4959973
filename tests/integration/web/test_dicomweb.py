"""DICOMweb against a running archive over HTTPS with API tokens: QIDO-RS, WADO-RS, STOW-RS,
capabilities, permissions and CORS (PS3.18)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pacsguard.lab.synth import build_dataset, generate_archive, write_files

from ._multipart import read_parts, related_body
from .conftest import WebArchive, start_web

DICOM_JSON = "application/dicom+json"


@pytest.fixture
def lab_files(tmp_path: Path) -> list[Path]:
    directory = tmp_path / "lab"
    directory.mkdir()
    return write_files(generate_archive(seed=10, patients=2), directory)


def stow(web: WebArchive, files: list[Path], path: str = "/studies", user: str = "admin"):  # type: ignore[no-untyped-def]
    body, content_type = related_body(f.read_bytes() for f in files)
    with web.client(user) as client:
        return client.post(
            path, content=body, headers={"Content-Type": content_type, "Accept": DICOM_JSON}
        )


def value(item: dict[str, object], tag: str) -> object:
    entry = item.get(tag)
    assert isinstance(entry, dict), (tag, item)
    values = entry.get("Value")
    return values[0] if isinstance(values, list) and values else None


def test_stow_then_qido_finds_every_study_and_the_counts(
    web: WebArchive, lab_files: list[Path]
) -> None:
    answer = stow(web, lab_files)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(DICOM_JSON)
    referenced = answer.json()["00081199"]["Value"]
    assert len(referenced) == len(lab_files)
    assert "00081198" not in answer.json()
    stored = {dcmread(f).SOPInstanceUID for f in lab_files}
    assert {value(item, "00081155") for item in referenced} == stored
    studies = {dcmread(f).StudyInstanceUID for f in lab_files}
    with web.client("reader") as client:
        found = client.get("/studies")
    assert found.status_code == 200
    assert {value(s, "0020000D") for s in found.json()} == studies
    for study in found.json():
        uid = value(study, "0020000D")
        expected = sum(1 for f in lab_files if dcmread(f).StudyInstanceUID == uid)
        assert value(study, "00201208") == expected  # NumberOfStudyRelatedInstances


def test_qido_matching_paging_includefield_and_warnings(
    web: WebArchive, lab_files: list[Path]
) -> None:
    assert stow(web, lab_files).status_code == 200
    one = dcmread(lab_files[0])
    with web.client("reader") as client:
        by_id = client.get("/studies", params={"PatientID": one.PatientID})
        by_tag = client.get("/studies", params={"00100020": one.PatientID})
        everything = client.get("/studies").json()
        page = client.get("/studies", params={"limit": 1, "offset": 1})
        series = client.get(f"/studies/{one.StudyInstanceUID}/series")
        instances = client.get(
            f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}/instances",
            params={"includefield": "all"},
        )
        fuzzy = client.get("/studies", params={"fuzzymatching": "true"})
        unsupported = client.get("/studies", params={"InstitutionName": "X*"})
    assert by_id.status_code == 200
    assert {value(s, "00100020") for s in by_id.json()} == {one.PatientID}
    assert by_id.json() == by_tag.json()
    assert len(everything) >= 2
    assert page.json() == everything[1:2]
    assert {value(s, "0020000E") for s in series.json()} >= {one.SeriesInstanceUID}
    assert one.SOPInstanceUID in {value(i, "00080018") for i in instances.json()}
    assert "299" in fuzzy.headers["warning"] and "fuzzymatching" in fuzzy.headers["warning"]
    assert fuzzy.json() == everything
    assert "InstitutionName" in unsupported.headers["warning"]


def test_wado_returns_the_stored_bytes_and_metadata_and_frames(
    web: WebArchive, lab_files: list[Path]
) -> None:
    assert stow(web, lab_files).status_code == 200
    one = dcmread(lab_files[0])
    study = [f for f in lab_files if dcmread(f).StudyInstanceUID == one.StudyInstanceUID]
    instance = (
        f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
        f"/instances/{one.SOPInstanceUID}"
    )
    with web.client("reader") as client:
        whole = client.get(f"/studies/{one.StudyInstanceUID}")
        single = client.get(
            instance, headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        metadata = client.get(instance + "/metadata")
        frames = client.get(instance + "/frames/1")
        other_syntax = client.get(
            instance,
            headers={
                "Accept": 'multipart/related; type="application/dicom"; '
                "transfer-syntax=1.2.840.10008.1.2.4.50"
            },
        )
        implicit = client.get(
            instance,
            headers={
                "Accept": 'multipart/related; type="application/dicom"; '
                "transfer-syntax=1.2.840.10008.1.2"
            },
        )
        rendered = client.get(instance, headers={"Accept": "image/jpeg"})
        missing = client.get("/studies/1.2.3.4.5")
    assert whole.status_code == 200
    parts = read_parts(whole)
    assert sorted(p for _, p in parts) == sorted(f.read_bytes() for f in study)
    assert all(t.startswith("application/dicom") for t, _ in parts)
    assert [p for _, p in read_parts(single)] == [lab_files[0].read_bytes()]
    assert metadata.headers["content-type"].startswith(DICOM_JSON)
    restored = Dataset.from_json(metadata.json()[0])
    assert restored.SOPInstanceUID == one.SOPInstanceUID
    assert restored.PatientID == one.PatientID
    assert [p for _, p in read_parts(frames)] == [one.PixelData]
    assert other_syntax.status_code == 406
    ((part_type, converted),) = read_parts(implicit)  # converted by the service
    assert "transfer-syntax=1.2.840.10008.1.2" in part_type.replace('"', "")
    again = dcmread(io.BytesIO(converted))
    assert again.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert again.PixelData == one.PixelData and again.SOPInstanceUID == one.SOPInstanceUID
    assert rendered.status_code == 406
    assert missing.status_code == 404


def test_permissions_are_the_users_roles_and_nothing_is_stored_without_store(
    web: WebArchive, lab_files: list[Path]
) -> None:
    refused = stow(web, lab_files[:1], user="reader")  # viewer: find, get, no store
    assert refused.status_code == 403
    with web.client("uploader") as client:  # modality: store, no find
        assert client.get("/studies").status_code == 403
    with web.client("reader") as client:
        assert client.get("/studies").json() == []
    assert stow(web, lab_files[:1], user="uploader").status_code == 200
    denials = [json.loads(line) for line in web.audit_lines() if '"policy-denial"' in line]
    assert {(d["detail"]["action"], d["participants"][0]["user"]) for d in denials} == {
        ("store", "reader"),
        ("find", "uploader"),
    }


def test_stow_duplicates_and_study_mismatch_are_reported_per_instance(
    web: WebArchive, lab_files: list[Path], tmp_path: Path
) -> None:
    assert stow(web, lab_files[:1]).status_code == 200
    assert stow(web, lab_files[:1]).status_code == 200  # an identical retry is a success
    changed = dcmread(lab_files[0])
    changed.StudyDescription = "other bytes, same SOP Instance UID"
    buffer = io.BytesIO()
    changed.save_as(buffer, enforce_file_format=True)
    conflict_file = tmp_path / "conflict.dcm"
    conflict_file.write_bytes(buffer.getvalue())
    conflict = stow(web, [conflict_file])
    assert conflict.status_code == 409
    failed = conflict.json()["00081198"]["Value"]
    assert value(failed[0], "00081197") == 0x0111
    other_study = stow(web, lab_files[1:2], path="/studies/1.2.3.999")
    assert other_study.status_code == 409
    assert value(other_study.json()["00081198"]["Value"][0], "00081197") == 0xA900
    mixed_body, content_type = related_body([lab_files[2].read_bytes(), b"not DICOM at all"])
    with web.client() as client:
        mixed = client.post("/studies", content=mixed_body, headers={"Content-Type": content_type})
    assert mixed.status_code == 202
    assert len(mixed.json()["00081199"]["Value"]) == 1
    assert value(mixed.json()["00081198"]["Value"][0], "00081197") == 0xC000


def test_capabilities_and_options(web: WebArchive) -> None:
    with web.client() as client:
        wadl = client.options("/", headers={"Accept": "application/vnd.sun.wadl+xml"})
        capabilities = client.get("/", headers={"Accept": "application/json"})
        allow = client.options("/studies")
    assert wadl.status_code == 200
    assert wadl.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
    assert '<resource path="studies">' in wadl.text
    assert {r["path"] for r in capabilities.json()["resources"]} >= {"/studies", "/series"}
    assert set(allow.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}


def test_cors_only_for_configured_origins(tmp_path: Path) -> None:
    web = start_web(tmp_path, **{"dicomweb.cors_origins": "https://viewer.test"})
    try:
        with web.client() as client:
            allowed = client.get("/studies", headers={"Origin": "https://viewer.test"})
            other = client.get("/studies", headers={"Origin": "https://evil.test"})
            preflight = client.options(
                "/studies",
                headers={
                    "Origin": "https://evil.test",
                    "Access-Control-Request-Method": "GET",
                },
            )
        assert allowed.headers["access-control-allow-origin"] == "https://viewer.test"
        assert "access-control-allow-origin" not in other.headers
        assert "access-control-allow-origin" not in preflight.headers
    finally:
        web.archive.stop()
    plain = start_web(tmp_path / "plain")
    try:
        with plain.client() as client:
            answer = client.get("/studies", headers={"Origin": "https://viewer.test"})
        assert "access-control-allow-origin" not in answer.headers
    finally:
        plain.archive.stop()


def test_large_stow_parts_are_staged_and_come_back_intact(web: WebArchive) -> None:
    patient = generate_archive(seed=6, patients=1).patients[0]
    study = patient.studies[0]
    series = study.series[0]
    template = series.instances[0]
    blobs = []
    for n in range(8):  # 8 parts of 1.5 MiB: each over the in-memory part size
        instance = replace(
            template, sop_instance_uid=f"{template.sop_instance_uid}.{n + 1}", instance_number=n + 1
        )
        buffer = io.BytesIO()
        build_dataset(patient, study, series, instance, rows=768, columns=1024).save_as(
            buffer, enforce_file_format=True
        )
        blobs.append(buffer.getvalue())
    body, content_type = related_body(blobs)
    with web.client() as client:
        answer = client.post("/studies", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 200, answer.text
        back = client.get(f"/studies/{study.study_instance_uid}")
    assert sorted(p for _, p in read_parts(back)) == sorted(blobs)
    assert not any((web.data_dir / "tmp").iterdir())  # staged parts are gone
