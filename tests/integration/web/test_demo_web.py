"""The demo's DICOMweb round trip (`archive.demo_web`) against a real archive: it passes on a
secure one and says what went wrong otherwise (bytes that differ, a user without an account,
an archive that answers without a token)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pacsguard.archive import tokens
from pacsguard.archive.demo_web import run_web_demo
from pacsguard.lab.synth import build_dataset, generate_archive

from ._multipart import related_body
from .conftest import WebArchive, start_web


def _stow_one(web: WebArchive) -> tuple[str, bytes]:
    """Store one synthetic instance by STOW-RS; (its SOP Instance UID, its Part 10 bytes)."""
    patient, study, series, instance = next(iter(generate_archive(7, 1).walk()))
    buffer = BytesIO()
    build_dataset(patient, study, series, instance).save_as(buffer, enforce_file_format=True)
    body, content_type = related_body([buffer.getvalue()])
    with web.client("admin") as client:
        answer = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
    assert answer.status_code == 200, answer.text
    return instance.sop_instance_uid, buffer.getvalue()


def test_round_trip_on_a_secure_archive(web: WebArchive) -> None:
    sop, part10 = _stow_one(web)
    result = run_web_demo(web.base_url, web.ca_file, web.data_dir, "admin", {sop: part10})
    assert result.problems == ()
    assert result.ok
    assert (result.anonymous_status, result.anonymous_challenge) == (
        401,
        'Bearer realm="pacsguard"',
    )
    assert (result.studies, result.instances_in_study, result.wado_status) == (1, 1, 200)
    assert (result.identical, result.wado_bytes) == (True, len(part10))
    issued = tokens.load(web.data_dir / tokens.TOKENS_FILE)
    assert (result.token_id, "admin") in {(r.id, r.username) for r in issued}  # the CLI's
    assert result.command == f"pacsguard token issue --user admin --data-dir {web.data_dir}"


def test_round_trip_reports_bytes_that_differ(web: WebArchive) -> None:
    sop, part10 = _stow_one(web)
    changed = part10[:-1] + bytes([part10[-1] ^ 0xFF])
    result = run_web_demo(web.base_url, web.ca_file, web.data_dir, "admin", {sop: changed})
    assert not result.ok
    assert result.identical is False
    assert result.problems == (
        f"WADO-RS answered 1 part(s) of {len(part10)} bytes, not the {len(changed)} bytes stored",
    )


def test_round_trip_reports_a_user_without_an_account(web: WebArchive) -> None:
    result = run_web_demo(web.base_url, web.ca_file, web.data_dir, "nobody", {})
    assert not result.ok
    assert result.token_id is None
    assert len(result.problems) == 1
    assert "`pacsguard token issue` exited 2" in result.problems[0]
    assert "users.nobody does not exist" in result.problems[0]


def test_round_trip_reports_an_archive_that_answers_without_a_token(tmp_path: Path) -> None:
    web = start_web(tmp_path, tester=True)  # TESTER trusted by 127.0.0.1: tokenless requests in
    try:
        sop, part10 = _stow_one(web)
        result = run_web_demo(web.base_url, web.ca_file, web.data_dir, "admin", {sop: part10})
    finally:
        web.archive.stop()
    assert result.anonymous_status == 200
    assert "GET /studies without a token answered 200" in result.problems
    assert result.identical  # the rest of the round trip still ran
    assert not result.ok
