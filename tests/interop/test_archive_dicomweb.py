"""DICOMweb of the archive against clients nobody here wrote (issue 10, deliverable 5):

- dicomweb-client (Python, over requests) runs QIDO-RS, WADO-RS (instances, metadata, frames)
  and STOW-RS with an API token over TLS, verifying our first-run CA;
- a study stored by dcmtk `storescu` comes back byte for byte over WADO-RS;
- a study stored by STOW-RS is found by dcmtk `findscu` and retrieved by `getscu`.

DIMSE tools use the loopback plaintext listener as TESTER (trusted by its address).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from tests.integration.web._multipart import read_parts
from tests.integration.web.conftest import WebArchive, start_web

from .conftest import require_tools
from .peers import LabData, ToolOutcome, executable, run_tool

pytestmark = pytest.mark.interop


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebArchive]:
    running = start_web(tmp_path, tester=True)
    try:
        yield running
    finally:
        running.archive.stop()


def dicomweb(web: WebArchive, user: str = "admin") -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE would replace our CA (and proxies apply)
    session.verify = str(web.ca_file)
    session.headers["Authorization"] = f"Bearer {web.token(user)}"
    return DICOMwebClient(url=web.base_url, session=session)


def dcmtk(tool: str, *args: str) -> ToolOutcome:
    return ToolOutcome.from_completed(run_tool([str(executable(tool)), "-v", *args], timeout=120))


def test_dicomweb_client_stows_searches_and_retrieves(web: WebArchive, lab_data: LabData) -> None:
    files = list(lab_data.files[:6])
    datasets = [dcmread(f) for f in files]
    client = dicomweb(web)
    answer = client.store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == len(files)
    assert "FailedSOPSequence" not in answer
    studies = client.search_for_studies(search_filters={"PatientID": datasets[0].PatientID})
    assert {s["0020000D"]["Value"][0] for s in studies} == {
        d.StudyInstanceUID for d in datasets if d.PatientID == datasets[0].PatientID
    }
    one = datasets[0]
    series = client.search_for_series(one.StudyInstanceUID)
    assert one.SeriesInstanceUID in {s["0020000E"]["Value"][0] for s in series}
    instance = client.retrieve_instance(
        one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID
    )
    assert instance.SOPInstanceUID == one.SOPInstanceUID
    assert instance.PixelData == one.PixelData
    metadata = client.retrieve_study_metadata(one.StudyInstanceUID)
    assert one.SOPInstanceUID in {m["00080018"]["Value"][0] for m in metadata}
    frames = client.retrieve_instance_frames(
        one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID, frame_numbers=[1]
    )
    assert frames == [one.PixelData]
    whole = client.retrieve_study(one.StudyInstanceUID)
    assert {d.SOPInstanceUID for d in whole} == {
        d.SOPInstanceUID for d in datasets if d.StudyInstanceUID == one.StudyInstanceUID
    }


def test_dicomweb_client_without_the_token_gets_401(tmp_path: Path) -> None:
    web = start_web(tmp_path)  # no AE trusted by address: a request without a token is anonymous
    try:
        with requests.Session() as session:
            session.trust_env = False
            session.verify = str(web.ca_file)
            client = DICOMwebClient(url=web.base_url, session=session)
            with pytest.raises(requests.HTTPError) as refused:
                client.search_for_studies()
        assert refused.value.response.status_code == 401
    finally:
        web.archive.stop()


def test_storescu_study_is_byte_identical_over_wado(
    web: WebArchive, lab_data: LabData, tmp_path: Path
) -> None:
    require_tools("storescu")
    stored = dcmtk(
        "storescu", "-aet", "TESTER", "-aec", "PACSGUARD", "+sd",
        "127.0.0.1", str(web.dimse_port), str(lab_data.directory),
    )  # fmt: skip
    assert stored.ok, stored.log[-2000:]
    by_study: dict[str, list[bytes]] = {}
    for path in lab_data.files:
        by_study.setdefault(
            str(dcmread(path, stop_before_pixels=True).StudyInstanceUID), []
        ).append(path.read_bytes())
    with web.client("reader") as client:
        for study, originals in by_study.items():
            answer = client.get(f"/studies/{study}")
            assert answer.status_code == 200
            assert sorted(p for _, p in read_parts(answer)) == sorted(originals)


def test_stow_study_is_found_by_findscu_and_fetched_by_getscu(
    web: WebArchive, lab_data: LabData, tmp_path: Path
) -> None:
    require_tools("findscu", "getscu")
    files = [
        f
        for f in lab_data.files
        if dcmread(f).StudyInstanceUID == dcmread(lab_data.files[0]).StudyInstanceUID
    ]
    answer = dicomweb(web).store_instances([dcmread(f) for f in files])
    assert len(answer.ReferencedSOPSequence) == len(files)
    study = str(dcmread(files[0]).StudyInstanceUID)
    out = tmp_path / "found"
    out.mkdir()
    found = dcmtk(
        "findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "-k", "NumberOfStudyRelatedInstances", "-X", "-od", str(out),
        "-aet", "TESTER", "-aec", "PACSGUARD", "127.0.0.1", str(web.dimse_port),
    )  # fmt: skip
    assert found.ok, found.log[-2000:]
    responses = [dcmread(p) for p in sorted(out.iterdir())]
    assert [str(r.StudyInstanceUID) for r in responses] == [study]
    assert int(responses[0].NumberOfStudyRelatedInstances) == len(files)
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    got = dcmtk(
        "getscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "-od", str(fetched), "-aet", "TESTER", "-aec", "PACSGUARD",
        "127.0.0.1", str(web.dimse_port),
    )  # fmt: skip
    assert got.returncode == 0, got.log[-2000:]
    # getscu writes its own File Meta Information: compare the data sets
    received = {str(d.SOPInstanceUID): d for d in map(dcmread, fetched.iterdir())}
    sent = {str(d.SOPInstanceUID): d for d in map(dcmread, files)}
    assert received.keys() == sent.keys()
    for uid, original in sent.items():
        assert received[uid].PixelData == original.PixelData
        assert received[uid].PatientID == original.PatientID
    shutil.rmtree(fetched)


def test_qido_matches_what_findscu_finds(
    web: WebArchive, lab_data: LabData, tmp_path: Path
) -> None:
    """One query engine: the same keys give the same studies over QIDO-RS and C-FIND."""
    require_tools("storescu", "findscu")
    stored = dcmtk(
        "storescu", "-aet", "TESTER", "-aec", "PACSGUARD", "+sd",
        "127.0.0.1", str(web.dimse_port), str(lab_data.directory),
    )  # fmt: skip
    assert stored.ok, stored.log[-2000:]
    first = dcmread(lab_data.files[0], stop_before_pixels=True)
    family = str(first.PatientName).split("^")[0]
    queries = [
        {},
        {"PatientName": f"{family[:2]}*"},
        {"PatientID": str(first.PatientID)},
        {"StudyDate": f"-{first.StudyDate}"},
        {"ModalitiesInStudy": "", "AccessionNumber": f"{str(first.AccessionNumber)[:3]}*"},
    ]
    with web.client("reader") as client:
        for n, keys in enumerate(queries):
            out = tmp_path / f"find{n}"
            out.mkdir()
            arguments = [a for k, v in keys.items() for a in ("-k", f"{k}={v}")]
            found = dcmtk(
                "findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                *arguments, "-X", "-od", str(out),
                "-aet", "TESTER", "-aec", "PACSGUARD", "127.0.0.1", str(web.dimse_port),
            )  # fmt: skip
            assert found.ok, found.log[-2000:]
            by_dimse = {str(dcmread(p).StudyInstanceUID) for p in out.iterdir()}
            answer = client.get("/studies", params={k: v for k, v in keys.items() if v})
            by_web = {s["0020000D"]["Value"][0] for s in answer.json()}
            assert by_web == by_dimse, keys
            assert by_web or not keys  # the lab data makes every query match something
