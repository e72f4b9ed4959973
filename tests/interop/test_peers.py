"""The interop harness starts real peers that hold the lab archive and behave as documented.

These tests pin the behaviour the scanner's probes will be compared against: which step a locked
peer refuses (association, with which A-ASSOCIATE-RJ reason, or the command), what a C-FIND
returns, and what nmap's dicom-ping concludes about each peer.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

from .peers import (
    LOOPBACK,
    AssociateAnswer,
    DcmqrscpPeer,
    DicomPing,
    LabData,
    OrthancPeer,
    StorescpPeer,
    echoscu,
    find_executable,
    findscu_studies,
    nmap_dicom_ping,
    orthanc_counts,
    orthanc_rest_get,
    raw_associate,
    require_loopback,
    storescu,
)

pytestmark = pytest.mark.interop

ANY_PEER_AET = "PGSOMEONE"


def study_uids(lab: LabData) -> set[str]:
    return {
        study.study_instance_uid for patient in lab.archive.patients for study in patient.studies
    }


# --- harness safety ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["192.0.2.1", "198.51.100.1", "::1", "localhost", "0.0.0.0"])
def test_harness_refuses_targets_outside_loopback(host: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|never resolves"):
        require_loopback(host)


def test_harness_accepts_the_whole_loopback_block() -> None:
    assert require_loopback("127.0.0.1") == "127.0.0.1"
    assert require_loopback("127.12.0.9") == "127.12.0.9"


# --- Orthanc, open profile ----------------------------------------------------------------------


def test_open_orthanc_holds_the_lab_archive(open_orthanc: OrthancPeer, lab_data: LabData) -> None:
    assert open_orthanc.counts == lab_data.counts
    assert orthanc_counts(open_orthanc) == lab_data.counts


def test_open_orthanc_answers_echo_from_any_ae_pair(open_orthanc: OrthancPeer) -> None:
    outcome = echoscu(
        open_orthanc.host, open_orthanc.port, calling_aet=ANY_PEER_AET, called_aet="WHATEVER"
    )
    assert outcome.ok, outcome.log
    assert outcome.rejection is None


def test_open_orthanc_study_find_returns_every_study(
    open_orthanc: OrthancPeer, lab_data: LabData, tmp_path: Path
) -> None:
    found = findscu_studies(
        open_orthanc.host,
        open_orthanc.port,
        tmp_path / "rsp",
        calling_aet=ANY_PEER_AET,
        called_aet=open_orthanc.aet,
    )
    assert found.ok, found.tool.log
    assert len(found.responses) == lab_data.counts.studies
    assert {str(ds.StudyInstanceUID) for ds in found.responses} == study_uids(lab_data)
    # Orthanc computes the count attributes the scanner relies on.
    assert sum(int(ds.NumberOfStudyRelatedInstances) for ds in found.responses) == (
        lab_data.counts.instances
    )
    assert sum(int(ds.NumberOfStudyRelatedSeries) for ds in found.responses) == (
        lab_data.counts.series
    )


# --- Orthanc, locked profile --------------------------------------------------------------------


def test_locked_orthanc_holds_the_lab_archive(
    locked_orthanc: OrthancPeer, lab_data: LabData
) -> None:
    assert orthanc_counts(locked_orthanc) == lab_data.counts


def test_locked_orthanc_rejects_unknown_called_ae(locked_orthanc: OrthancPeer) -> None:
    outcome = echoscu(
        locked_orthanc.host,
        locked_orthanc.port,
        calling_aet=locked_orthanc.query_aet,
        called_aet="WRONG",
    )
    assert not outcome.ok
    assert not outcome.accepted
    assert outcome.rejection is not None, outcome.log
    assert outcome.rejection.result == "Rejected Permanent"
    assert outcome.rejection.source == "Service User"
    assert outcome.rejection.reason_code == 7  # called AE title not recognized


@pytest.mark.parametrize("calling_aet", [ANY_PEER_AET, "pgquery"])
def test_locked_orthanc_rejects_unregistered_calling_ae_at_association(
    locked_orthanc: OrthancPeer, calling_aet: str
) -> None:
    """Unknown (or wrongly cased: StrictAetComparison) calling AEs never get an association."""
    outcome = echoscu(
        locked_orthanc.host,
        locked_orthanc.port,
        calling_aet=calling_aet,
        called_aet=locked_orthanc.aet,
    )
    assert outcome.rejection is not None, outcome.log
    assert outcome.rejection.result == "Rejected Permanent"
    assert outcome.rejection.reason_code == 3  # calling AE title not recognized


def test_locked_orthanc_answers_its_registered_query_ae(
    locked_orthanc: OrthancPeer, lab_data: LabData, tmp_path: Path
) -> None:
    echo = echoscu(
        locked_orthanc.host,
        locked_orthanc.port,
        calling_aet=locked_orthanc.query_aet,
        called_aet=locked_orthanc.aet,
    )
    assert echo.ok, echo.log
    found = findscu_studies(
        locked_orthanc.host,
        locked_orthanc.port,
        tmp_path / "rsp",
        calling_aet=locked_orthanc.query_aet,
        called_aet=locked_orthanc.aet,
    )
    assert found.ok, found.tool.log
    assert len(found.responses) == lab_data.counts.studies


def test_locked_orthanc_aborts_find_from_a_store_only_modality(
    locked_orthanc: OrthancPeer, tmp_path: Path
) -> None:
    """A registered AE without AllowFind gets the association, then an A-ABORT at C-FIND."""
    found = findscu_studies(
        locked_orthanc.host,
        locked_orthanc.port,
        tmp_path / "rsp",
        calling_aet=locked_orthanc.loader_aet,
        called_aet=locked_orthanc.aet,
    )
    assert found.tool.accepted, found.tool.log
    assert found.tool.aborted, found.tool.log
    assert found.responses == ()
    assert not found.ok


def test_locked_orthanc_rejects_a_registered_ae_from_another_address(
    locked_orthanc: OrthancPeer,
) -> None:
    """DicomCheckModalityHost: PGQUERY is allowed from 127.0.0.1 only; 127.0.0.2 is refused."""
    answers = {}
    for source in (LOOPBACK, "127.0.0.2"):
        try:
            answers[source] = raw_associate(
                locked_orthanc.host,
                locked_orthanc.port,
                calling_aet=locked_orthanc.query_aet,
                called_aet=locked_orthanc.aet,
                source=source,
            )
        except OSError as exc:
            pytest.skip(f"cannot connect from {source}: {exc}")
    assert answers[LOOPBACK].accepted
    # A-ASSOCIATE-RJ: rejected-permanent (1), service-user (1), calling AE not recognized (3).
    assert answers["127.0.0.2"] == AssociateAnswer(pdu_type=0x03, result=1, source=1, reason=3)


def test_locked_orthanc_rest_requires_credentials(locked_orthanc: OrthancPeer) -> None:
    with pytest.raises(urllib.error.HTTPError) as denied:
        orthanc_rest_get(locked_orthanc, "/statistics", authenticate=False)
    denied.value.close()
    assert denied.value.code == 401


# --- dcmqrscp -----------------------------------------------------------------------------------


def test_dcmqrscp_open_ae_answers_any_calling_ae(
    dcmqrscp_peer: DcmqrscpPeer, lab_data: LabData, tmp_path: Path
) -> None:
    found = findscu_studies(
        dcmqrscp_peer.host,
        dcmqrscp_peer.port,
        tmp_path / "rsp",
        calling_aet=ANY_PEER_AET,
        called_aet=dcmqrscp_peer.open_aet,
    )
    assert found.ok, found.tool.log
    assert len(found.responses) == lab_data.counts.studies
    assert {str(ds.StudyInstanceUID) for ds in found.responses} == study_uids(lab_data)


def test_dcmqrscp_omits_study_count_attributes(dcmqrscp_peer: DcmqrscpPeer, tmp_path: Path) -> None:
    """dcmqrscp does not compute NumberOfStudyRelated*: a scanner must cope with their absence."""
    found = findscu_studies(
        dcmqrscp_peer.host,
        dcmqrscp_peer.port,
        tmp_path / "rsp",
        calling_aet=ANY_PEER_AET,
        called_aet=dcmqrscp_peer.open_aet,
    )
    assert found.responses
    for ds in found.responses:
        assert "NumberOfStudyRelatedInstances" not in ds
        assert "NumberOfStudyRelatedSeries" not in ds


def test_dcmqrscp_locked_ae_rejects_a_foreign_calling_ae(dcmqrscp_peer: DcmqrscpPeer) -> None:
    """dcmqrscp blames the called AE (reason 7) although the calling AE is what it refuses."""
    outcome = echoscu(
        dcmqrscp_peer.host,
        dcmqrscp_peer.port,
        calling_aet=ANY_PEER_AET,
        called_aet=dcmqrscp_peer.locked_aet,
    )
    assert outcome.rejection is not None, outcome.log
    assert outcome.rejection.result == "Rejected Permanent"
    assert outcome.rejection.source == "Service User"
    assert outcome.rejection.reason_code == 7


def test_dcmqrscp_locked_ae_answers_its_trusted_peer(
    dcmqrscp_peer: DcmqrscpPeer, lab_data: LabData, tmp_path: Path
) -> None:
    found = findscu_studies(
        dcmqrscp_peer.host,
        dcmqrscp_peer.port,
        tmp_path / "rsp",
        calling_aet=dcmqrscp_peer.trusted_aet,
        called_aet=dcmqrscp_peer.locked_aet,
    )
    assert found.ok, found.tool.log
    assert len(found.responses) == lab_data.counts.studies


# --- storescp -----------------------------------------------------------------------------------


def test_storescp_accepts_echo(storescp_peer: StorescpPeer) -> None:
    outcome = echoscu(
        storescp_peer.host,
        storescp_peer.port,
        calling_aet=ANY_PEER_AET,
        called_aet=storescp_peer.aet,
    )
    assert outcome.ok, outcome.log


def test_storescp_accepts_store(storescp_peer: StorescpPeer, lab_data: LabData) -> None:
    instance = next(iter(lab_data.archive.walk()))[3]
    sent = [p for p in lab_data.files if p.stem == instance.sop_instance_uid]
    outcome = storescu(
        storescp_peer.host,
        storescp_peer.port,
        sent,
        calling_aet=ANY_PEER_AET,
        called_aet=storescp_peer.aet,
    )
    assert outcome.ok, outcome.log
    received = [p.name for p in storescp_peer.output_dir.iterdir()]
    assert any(instance.sop_instance_uid in name for name in received), received


# --- nmap dicom-ping ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_ping(
    open_orthanc: OrthancPeer,
    locked_orthanc: OrthancPeer,
    dcmqrscp_peer: DcmqrscpPeer,
    storescp_peer: StorescpPeer,
    closed_port: int,
) -> dict[str, DicomPing]:
    """One nmap run over every peer, the open Orthanc's HTTP port and a closed port."""
    if find_executable("nmap") is None:
        pytest.skip("not installed: nmap")
    targets = {
        "open_orthanc": open_orthanc.port,
        "locked_orthanc": locked_orthanc.port,
        "dcmqrscp": dcmqrscp_peer.port,
        "storescp": storescp_peer.port,
        "http": open_orthanc.http_port,
        "closed": closed_port,
    }
    scanned = nmap_dicom_ping([(LOOPBACK, port) for port in targets.values()])
    return {name: scanned[(LOOPBACK, port)] for name, port in targets.items()}


def test_dicom_ping_reports_the_open_orthanc_as_accepting_any_aet(
    dicom_ping: dict[str, DicomPing],
) -> None:
    result = dicom_ping["open_orthanc"]
    assert result["state"] == "open"
    assert result["dicom"], result
    assert result["any_aet_accepted"]


def test_dicom_ping_reports_nothing_on_a_closed_port(dicom_ping: dict[str, DicomPing]) -> None:
    result = dicom_ping["closed"]
    assert result["state"] == "closed"
    assert not result["dicom"]
    assert result["config"] is None


def test_dicom_ping_reports_no_dicom_on_an_http_port(dicom_ping: dict[str, DicomPing]) -> None:
    result = dicom_ping["http"]
    assert result["state"] == "open"
    assert not result["dicom"], result


@pytest.mark.parametrize("peer", ["locked_orthanc", "dcmqrscp"])
def test_dicom_ping_reports_an_association_reject_as_called_aet_check(
    dicom_ping: dict[str, DicomPing], peer: str
) -> None:
    result = dicom_ping[peer]
    assert result["dicom"], result
    assert result["called_aet_check"]


def test_dicom_ping_reports_storescp_as_accepting_any_aet(
    dicom_ping: dict[str, DicomPing],
) -> None:
    assert dicom_ping["storescp"]["any_aet_accepted"], dicom_ping["storescp"]
