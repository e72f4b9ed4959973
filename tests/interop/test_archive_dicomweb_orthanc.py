"""Orthanc as a DICOMweb client of the archive (issue 10, deliverable 5, second bullet).

Debian's Orthanc 1.10 with Debian's orthanc-dicomweb plugin is configured with the archive as
a remote DICOMweb server ("DicomWeb": {"Servers": {...}}) whose "HttpHeaders" carry an API
token, and with the archive's first-run CA as "HttpsCACertificates" (peers verified, the
default "HttpsVerifyPeers": true). Through Orthanc's REST API it then stores to the archive
(`/dicom-web/servers/pacsguard/stow`), queries it (`.../qido`) and retrieves from it
(`.../retrieve`). Everything stays on loopback.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from pacsguard.archive import tokens
from tests.integration.web._multipart import read_parts, related_body
from tests.integration.web.conftest import WebArchive, start_web

from ._orthanc import dicomweb_plugin
from .conftest import require_tools
from .peers import (
    LOOPBACK,
    LabData,
    OrthancPeer,
    open_profile,
    orthanc_rest_get,
    running_orthanc,
)

pytestmark = pytest.mark.interop

SERVER = "pacsguard"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebArchive]:
    running = start_web(tmp_path)  # no AE trusted by address: every request needs the token
    try:
        yield running
    finally:
        running.archive.stop()


def _dicomweb_servers(web: WebArchive, token: str) -> dict[str, object]:
    return {
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {
                SERVER: {
                    "Url": web.base_url + "/",
                    "HttpHeaders": {"Authorization": f"Bearer {token}"},
                }
            },
        },
        "HttpsVerifyPeers": True,
        "HttpsCACertificates": str(web.ca_file),
        "HttpTimeout": 60,
    }


@pytest.fixture
def orthanc(web: WebArchive, lab_data: LabData, tmp_path: Path) -> Iterator[OrthancPeer]:
    """Orthanc holding the lab data, with the archive registered under SERVER."""
    require_tools("Orthanc", "storescu")
    if dicomweb_plugin() is None:
        pytest.skip("not installed: orthanc-dicomweb (Debian)")
    profile = dataclasses.replace(open_profile(), web=True)
    extra = _dicomweb_servers(web, web.token("admin"))
    with running_orthanc(profile, tmp_path / "orthanc", lab_data, extra=extra) as peer:
        yield peer


def _orthanc(peer: OrthancPeer, method: str, path: str, body: object = None) -> Any:
    """Call Orthanc's REST API (proxies bypassed); the JSON answer, or the raw bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{peer.http_port}{path}", data=data, method=method
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as refused:
        detail = refused.read().decode(errors="replace")[:2000]
        raise AssertionError(f"Orthanc {method} {path}: {refused.code} {detail}") from refused
    return json.loads(raw) if "json" in kind else raw


def _orthanc_study(peer: OrthancPeer, study_uid: str) -> str:
    found = _orthanc(peer, "POST", "/tools/lookup", study_uid.encode())
    assert isinstance(found, list)
    return next(str(f["ID"]) for f in found if f["Type"] == "Study")


def _orthanc_files(peer: OrthancPeer, study_id: str) -> dict[str, bytes]:
    """SOP Instance UID -> the Part 10 file Orthanc holds, for one study."""
    out = {}
    for instance in orthanc_rest_get(peer, f"/studies/{study_id}/instances"):
        raw = _orthanc(peer, "GET", f"/instances/{instance['ID']}/file")
        out[str(instance["MainDicomTags"]["SOPInstanceUID"])] = raw
    return out


def _studies(lab_data: LabData) -> dict[str, list[Path]]:
    by_study: dict[str, list[Path]] = {}
    for path in lab_data.files:
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        by_study.setdefault(uid, []).append(path)
    return by_study


def _value(answer: dict[str, Any], tag: str) -> str:
    """One attribute of a QIDO answer as Orthanc relays it (its own JSON, keyed by tag:
    {"0020000D": {"Group": 32, "Element": 13, "Name": ..., "vr": "UI", "Value": "1.2..."}})."""
    element = answer.get(tag)
    assert element is not None, json.dumps(answer)[:1500]
    return str(element["Value"])


def _stow_ourselves(web: WebArchive, files: dict[str, bytes]) -> None:
    """Store `files` in the archive with our own STOW-RS client (not Orthanc's)."""
    body, content_type = related_body(files.values())
    with web.client("uploader") as client:
        answer = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
    assert answer.status_code == 200, answer.text


def test_orthanc_queries_the_archive(
    web: WebArchive, orthanc: OrthancPeer, lab_data: LabData
) -> None:
    studies = _studies(lab_data)
    first, second = sorted(studies)[:2]
    for uid in (first, second):
        _stow_ourselves(web, _orthanc_files(orthanc, _orthanc_study(orthanc, uid)))
    patient = str(dcmread(studies[first][0], stop_before_pixels=True).PatientID)
    expected = {
        uid
        for uid in (first, second)
        if str(dcmread(studies[uid][0], stop_before_pixels=True).PatientID) == patient
    }
    found = _orthanc(
        orthanc, "POST", f"/dicom-web/servers/{SERVER}/qido",
        {"Uri": "/studies", "Arguments": {"PatientID": patient}},
    )  # fmt: skip
    assert {_value(f, "0020000D") for f in found} == expected
    instances = _orthanc(
        orthanc, "POST", f"/dicom-web/servers/{SERVER}/qido",
        {"Uri": f"/studies/{first}/instances"},
    )  # fmt: skip
    assert {_value(f, "00080018") for f in instances} == {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in studies[first]
    }


def test_orthanc_retrieves_from_the_archive_byte_identical(
    web: WebArchive, orthanc: OrthancPeer, lab_data: LabData
) -> None:
    first = sorted(_studies(lab_data))[0]
    held = _orthanc_files(orthanc, _orthanc_study(orthanc, first))
    _stow_ourselves(web, held)
    _orthanc(orthanc, "DELETE", f"/studies/{_orthanc_study(orthanc, first)}")
    with pytest.raises(StopIteration):
        _orthanc_study(orthanc, first)
    retrieved = _orthanc(
        orthanc, "POST", f"/dicom-web/servers/{SERVER}/retrieve",
        {"Resources": [{"Study": first}]},
    )  # fmt: skip
    assert isinstance(retrieved, dict), retrieved
    assert _orthanc_files(orthanc, _orthanc_study(orthanc, first)) == held


def test_orthanc_stores_to_the_archive(
    web: WebArchive, orthanc: OrthancPeer, lab_data: LabData
) -> None:
    first = sorted(_studies(lab_data))[0]
    study_id = _orthanc_study(orthanc, first)
    answer = _orthanc(
        orthanc, "POST", f"/dicom-web/servers/{SERVER}/stow",
        {"Resources": [study_id], "Synchronous": True},
    )  # fmt: skip
    assert isinstance(answer, dict), answer
    sent = _orthanc_files(orthanc, study_id)
    with web.client("reader") as client:
        stored = client.get(f"/studies/{first}")
        assert stored.status_code == 200, stored.text
    assert sorted(p for _, p in read_parts(stored)) == sorted(sent.values())


def test_orthanc_with_a_revoked_token_is_refused(
    web: WebArchive, lab_data: LabData, tmp_path: Path
) -> None:
    """The same set-up with a token revoked before Orthanc uses it: the archive answers with
    401, which Orthanc reports as a failed request; nothing is stored by its STOW."""
    require_tools("Orthanc", "storescu")
    if dicomweb_plugin() is None:
        pytest.skip("not installed: orthanc-dicomweb (Debian)")
    profile = dataclasses.replace(open_profile(), web=True)
    store = web.data_dir / tokens.TOKENS_FILE
    record, token = tokens.issue(store, "admin", days=1)
    tokens.revoke(store, record.id)
    extra = _dicomweb_servers(web, token)
    with running_orthanc(profile, tmp_path / "orthanc", lab_data, extra=extra) as peer:
        with pytest.raises(AssertionError, match="Orthanc POST"):
            _orthanc(
                peer, "POST", f"/dicom-web/servers/{SERVER}/qido",
                {"Uri": "/studies", "Arguments": {}},
            )  # fmt: skip
        uid = sorted(_studies(lab_data))[0]
        with pytest.raises(AssertionError, match="Orthanc POST"):
            _orthanc(
                peer, "POST", f"/dicom-web/servers/{SERVER}/stow",
                {"Resources": [_orthanc_study(peer, uid)], "Synchronous": True},
            )  # fmt: skip
    with web.client("reader") as client:
        answer = client.get("/studies", headers={"Accept": "application/dicom+json"})
    assert answer.status_code == 200
    assert answer.json() == []
