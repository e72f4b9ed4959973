"""The scanner against real peers: exact counts, the right AE policy, and nmap's verdicts."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import pytest

from pacsguard.dicom.client import Timeouts
from pacsguard.scan.checks import assess
from pacsguard.scan.model import HostReport, LowerBoundReason, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse

from .conftest import require_tools
from .peers import (
    DcmqrscpPeer,
    LabData,
    OrthancPeer,
    QrscpPeer,
    StorescpPeer,
    nmap_dicom_ping,
    open_profile,
    running_orthanc,
)

pytestmark = pytest.mark.interop

OPTIONS = ProbeOptions(timeouts=Timeouts(connect=3.0, read=5.0), total_timeout=60.0)


def scan(host: str, port: int, options: ProbeOptions = OPTIONS) -> HostReport:
    return assess(asyncio.run(probe_dimse(Target(host, port), options)))


def counts(report: HostReport) -> dict[str, int]:
    exposure = report.observations.exposure
    assert exposure is not None, report
    assert exposure.lower_bound is False
    return {
        "patients": exposure.patients,
        "studies": exposure.studies,
        "series": exposure.series,
        "instances": exposure.instances,
    }


def test_open_orthanc_exposes_exactly_what_it_holds(
    open_orthanc: OrthancPeer, lab_data: LabData
) -> None:
    report = scan(open_orthanc.host, open_orthanc.port)
    obs = report.observations
    assert obs.any_called_ae_accepted is True
    assert obs.calling_ae_checked is False
    assert obs.echo_status == 0
    assert counts(report) == asdict(lab_data.counts)
    assert obs.exposure is not None and obs.exposure.method == "study-root"
    assert "storage" in obs.accepted_services
    ids = {f.id for f in report.findings}
    assert {
        "PG-DIMSE-ANON-ASSOC",
        "PG-DIMSE-ANY-CALLED-AE",
        "PG-DIMSE-ANON-FIND",
        "PG-DIMSE-PHI-EXPOSED",
        "PG-DIMSE-OPEN-STORE",
    } <= ids
    assert obs.implementation_version_name is not None
    # Orthanc speaks DIMSE through DCMTK and names DCMTK's version there (its own is on REST).
    assert report.product is not None and report.product.id == "dcmtk"
    assert obs.implementation_class_uid is not None
    assert obs.implementation_class_uid.endswith("." + str(report.product.version))
    cves = [f for f in report.findings if f.id.startswith("PG-CVE-")]
    assert all(f.evidence["match"] == "version-only" for f in cves)


def test_orthanc_result_limit_makes_counts_lower_bounds(tmp_path: Path, lab_data: LabData) -> None:
    # With LimitFindResults, Orthanc stops after N matches and ends the answer with status
    # 0xFE00 (cancel): what came back is a lower bound, not the archive's size.
    require_tools("Orthanc", "storescu")
    limit = 4
    assert lab_data.counts.studies > limit
    with running_orthanc(
        open_profile(), tmp_path, lab_data, extra={"LimitFindResults": limit}
    ) as peer:
        exposure = scan(peer.host, peer.port).observations.exposure
    assert exposure is not None
    assert exposure.studies == limit
    assert exposure.lower_bound is True
    assert exposure.lower_bound_reasons == (LowerBoundReason.CANCELLED,)
    assert "C-FIND STUDY ended with status 0xFE00" in exposure.notes


def test_locked_orthanc_gives_nothing_away(locked_orthanc: OrthancPeer) -> None:
    report = scan(locked_orthanc.host, locked_orthanc.port)
    obs = report.observations
    assert obs.dicom is True
    assert obs.accepted_called_aets == ()
    assert obs.any_called_ae_accepted is False or obs.calling_ae_checked is True
    assert obs.exposure is None
    assert {f.id for f in report.findings} == {"PG-DIMSE-NO-TLS"}


def test_locked_orthanc_with_its_called_aet_still_refuses_a_stranger(
    locked_orthanc: OrthancPeer,
) -> None:
    known = ProbeOptions(timeouts=OPTIONS.timeouts, called_aets=(locked_orthanc.aet,))
    obs = scan(locked_orthanc.host, locked_orthanc.port, known).observations
    assert obs.calling_ae_checked is True
    assert obs.accepted_called_aets == ()
    assert obs.attempts[-1].reason == "calling-ae-title-not-recognized"


def test_dcmqrscp_without_count_attributes_is_counted_exactly(
    dcmqrscp_peer: DcmqrscpPeer, lab_data: LabData
) -> None:
    # OPENQR is not a vendor default: ANY-SCP and the curated list are refused (reason 7).
    blind = scan(dcmqrscp_peer.host, dcmqrscp_peer.port).observations
    assert blind.any_called_ae_accepted is False
    assert blind.exposure is None
    known = ProbeOptions(timeouts=OPTIONS.timeouts, called_aets=(dcmqrscp_peer.open_aet,))
    report = scan(dcmqrscp_peer.host, dcmqrscp_peer.port, known)
    assert report.observations.accepted_called_aets == (dcmqrscp_peer.open_aet,)
    # dcmqrscp returns no NumberOfStudyRelated* attributes: SERIES/IMAGE fallback counts.
    assert counts(report) == asdict(lab_data.counts)
    exposure = report.observations.exposure
    assert exposure is not None
    assert any("count attributes missing" in n for n in exposure.notes)
    assert "PG-DIMSE-DEFAULT-AE" in {f.id for f in report.findings}


def test_pynetdicom_qrscp_answering_once_per_instance_is_counted_exactly(
    qrscp_peer: QrscpPeer, lab_data: LabData
) -> None:
    report = scan(qrscp_peer.host, qrscp_peer.port)
    obs = report.observations
    assert obs.any_called_ae_accepted is True
    assert counts(report) == asdict(lab_data.counts)
    exposure = obs.exposure
    assert exposure is not None
    # qrscp drops the count attributes and answers every level once per instance: studies and
    # series came back many times over, and were counted once each.
    assert any("count attributes missing" in n for n in exposure.notes)
    assert exposure.responses > lab_data.counts.instances
    assert {"PG-DIMSE-ANON-FIND", "PG-DIMSE-PHI-EXPOSED"} <= {f.id for f in report.findings}


def test_dcmqrscp_restricted_ae_refuses_the_scanner(dcmqrscp_peer: DcmqrscpPeer) -> None:
    known = ProbeOptions(timeouts=OPTIONS.timeouts, called_aets=(dcmqrscp_peer.locked_aet,))
    obs = scan(dcmqrscp_peer.host, dcmqrscp_peer.port, known).observations
    assert obs.dicom is True
    assert obs.accepted_called_aets == ()
    assert obs.exposure is None


def test_storescp_accepts_storage_but_has_nothing_to_query(storescp_peer: StorescpPeer) -> None:
    report = scan(storescp_peer.host, storescp_peer.port)
    obs = report.observations
    assert obs.any_called_ae_accepted is True
    assert obs.echo_status == 0
    assert obs.exposure is None
    assert "storage" in obs.accepted_services
    assert "PG-DIMSE-OPEN-STORE" in {f.id for f in report.findings}


def test_verdicts_agree_with_nmap_dicom_ping(
    open_orthanc: OrthancPeer,
    locked_orthanc: OrthancPeer,
    dcmqrscp_peer: DcmqrscpPeer,
    storescp_peer: StorescpPeer,
    closed_port: int,
) -> None:
    ports = [
        open_orthanc.port,
        locked_orthanc.port,
        dcmqrscp_peer.port,
        storescp_peer.port,
        open_orthanc.http_port,
        closed_port,
    ]
    nmap = nmap_dicom_ping([("127.0.0.1", port) for port in ports])
    fast = ProbeOptions(timeouts=Timeouts(connect=2.0, read=2.0), echo=False, count=False)
    for port in ports:
        obs = scan("127.0.0.1", port, fast).observations
        ping = nmap[("127.0.0.1", port)]
        first_accepted = bool(obs.attempts) and obs.attempts[0].outcome.value == "accepted"
        assert obs.dicom == ping["dicom"], (port, ping)
        assert first_accepted == ping["any_aet_accepted"], (port, ping)
        assert obs.reachable == (ping["state"] == "open"), (port, ping)
