"""The scanner against DICOM behind real TLS: stunnel4 in front of dcmqrscp, Orthanc DICOM-TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from pacsguard.dicom.client import Timeouts
from pacsguard.lab.certificates import CertSpec, LabCA
from pacsguard.scan.checks import assess
from pacsguard.scan.model import HostReport, Outcome, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse
from pacsguard.scan.tls import observe_tls, observing_context

from ._nmap import nmap_tls
from ._tls_peers import StunnelPeer, StunnelService, running_stunnel, running_tls_orthanc
from .conftest import require_tools
from .peers import DcmqrscpPeer, LabData, OrthancPeer

pytestmark = pytest.mark.interop

OPTIONS = ProbeOptions(timeouts=Timeouts(connect=3.0, read=5.0), total_timeout=90.0)
SERVICES = (
    StunnelService(
        "legacy",
        CertSpec("legacy.interop.lab", key="rsa", key_bits=2048),
        min_version="TLSv1",
        max_version="TLSv1.1",
        legacy=True,
    ),
    StunnelService(
        "expired",
        CertSpec(
            "expired.interop.lab",
            key="rsa",
            key_bits=2048,
            valid_from_days=-400,
            valid_until_days=-20,
            self_signed=True,
        ),
    ),
    StunnelService(
        "weak",
        CertSpec("weak.interop.lab", key="rsa", key_bits=1024, hash="sha1", self_signed=True),
        max_version="TLSv1.2",
        legacy=True,
    ),
    StunnelService("mutual", CertSpec("mutual.interop.lab"), client_certificate="required"),
    StunnelService("optional", CertSpec("optional.interop.lab"), client_certificate="optional"),
)


@pytest.fixture(scope="module")
def stunnel(
    tmp_path_factory: pytest.TempPathFactory, dcmqrscp_peer: DcmqrscpPeer
) -> Iterator[StunnelPeer]:
    require_tools("stunnel4")
    workdir = tmp_path_factory.mktemp("stunnel")
    with running_stunnel(workdir, dcmqrscp_peer.port, SERVICES) as peer:
        yield peer


def scan(port: int, options: ProbeOptions) -> HostReport:
    return assess(asyncio.run(probe_dimse(Target("127.0.0.1", port), options)))


def known(peer: DcmqrscpPeer, **changes: object) -> ProbeOptions:
    """The probe with dcmqrscp's open AE title (not a vendor default) as a known title."""
    values: dict[str, object] = {
        "timeouts": OPTIONS.timeouts,
        "total_timeout": OPTIONS.total_timeout,
        "called_aets": (peer.open_aet,),
    }
    values.update(changes)
    return ProbeOptions(**values)  # type: ignore[arg-type]


def tls_ids(report: HostReport) -> set[str]:
    return {f.id for f in report.findings if f.id.startswith("PG-TLS-")}


def exact_counts(report: HostReport) -> dict[str, int]:
    exposure = report.observations.exposure
    assert exposure is not None and exposure.lower_bound is False, report
    return {
        "patients": exposure.patients,
        "studies": exposure.studies,
        "series": exposure.series,
        "instances": exposure.instances,
    }


def test_dcmqrscp_behind_legacy_only_stunnel(
    stunnel: StunnelPeer, dcmqrscp_peer: DcmqrscpPeer, lab_data: LabData
) -> None:
    report = scan(stunnel.ports["legacy"], known(dcmqrscp_peer))
    obs = report.observations
    facts = obs.tls_facts
    assert facts is not None and obs.tls is True
    assert facts.versions_accepted == ("1.0", "1.1")
    assert facts.versions_refused == ("1.2", "1.3")
    assert facts.client_certificate.value == "not-requested"
    assert obs.attempts[0].outcome is not Outcome.ACCEPTED and not obs.attempts[0].tls
    assert obs.anomalies == ()
    # The same DICOM probe inside TLS: echo and exact counts of what dcmqrscp holds.
    assert obs.echo_status == 0
    assert exact_counts(report) == asdict(lab_data.counts)
    assert tls_ids(report) == {"PG-TLS-LEGACY-VERSION"}
    assert "PG-DIMSE-NO-TLS" not in {f.id for f in report.findings}


def test_expired_self_signed_and_weak_certificates(
    stunnel: StunnelPeer, dcmqrscp_peer: DcmqrscpPeer
) -> None:
    fast = known(dcmqrscp_peer, count=False)
    expired = scan(stunnel.ports["expired"], fast)
    cert = expired.observations.tls_facts and expired.observations.tls_facts.certificate
    assert cert and cert.expired and cert.self_signed and cert.subject.startswith("CN=expired")
    assert expired.observations.echo_status == 0
    assert tls_ids(expired) == {"PG-TLS-CERT-EXPIRED", "PG-TLS-CERT-SELF-SIGNED"}
    weak = scan(stunnel.ports["weak"], fast)
    facts = weak.observations.tls_facts
    assert facts is not None and facts.certificate is not None
    assert (facts.certificate.key_bits, facts.certificate.signature_hash) == (1024, "sha1")
    assert facts.versions_accepted == ("1.2",)
    assert weak.observations.echo_status == 0
    assert tls_ids(weak) == {
        "PG-TLS-WEAK-KEY",
        "PG-TLS-WEAK-SIGNATURE",
        "PG-TLS-CERT-SELF-SIGNED",
    }


def test_client_certificate_required_and_optional(
    stunnel: StunnelPeer, dcmqrscp_peer: DcmqrscpPeer, tmp_path: Path
) -> None:
    mutual = scan(stunnel.ports["mutual"], known(dcmqrscp_peer, count=False))
    obs = mutual.observations
    assert obs.tls_facts is not None
    assert obs.tls_facts.client_certificate.value == "required"
    assert obs.tls_facts.certificate is not None
    assert obs.dicom is False and obs.exposure is None and obs.anomalies == ()
    # With a certificate from stunnel's CA the same port speaks DICOM: the refusal was the TLS.
    cert, key = stunnel.ca.issue(CertSpec("auditor", client=True)).write(tmp_path, "client")
    context = observing_context()
    context.load_cert_chain(cert, key)
    inside = scan(stunnel.ports["mutual"], known(dcmqrscp_peer, count=False, tls=context))
    assert inside.observations.echo_status == 0
    optional = scan(stunnel.ports["optional"], known(dcmqrscp_peer, count=False))
    facts = optional.observations.tls_facts
    assert facts is not None and facts.client_certificate.value == "requested"
    assert optional.observations.echo_status == 0


@pytest.fixture(scope="module")
def tls_orthanc(
    tmp_path_factory: pytest.TempPathFactory, lab_data: LabData
) -> Iterator[tuple[OrthancPeer, LabCA]]:
    require_tools("Orthanc")
    workdir = tmp_path_factory.mktemp("orthanc-tls")
    with running_tls_orthanc(workdir, lab_data, remote_certificate_required=False) as peer:
        yield peer


def test_orthanc_with_dicom_tls_exposes_exactly_what_it_holds(
    tls_orthanc: tuple[OrthancPeer, LabCA], lab_data: LabData
) -> None:
    peer, _ = tls_orthanc
    report = scan(peer.port, OPTIONS)
    obs = report.observations
    facts = obs.tls_facts
    assert facts is not None and obs.tls is True
    # Debian 12's Orthanc 1.10.1 (DCMTK 3.6.7) serves TLS 1.0 to 1.3 and has no option to stop
    # 1.0/1.1 (DicomTlsMinimumProtocolVersion came in 1.12), so the legacy finding is real.
    assert facts.versions_accepted == ("1.0", "1.1", "1.2", "1.3")
    assert tls_ids(report) == {"PG-TLS-LEGACY-VERSION"}
    assert facts.certificate is not None and facts.certificate.subject.startswith("CN=orthanc")
    assert facts.certificate.self_signed is False
    # DicomTlsRemoteCertificateRequired false: Orthanc (DCMTK) still asks for a certificate.
    assert facts.client_certificate.value == "requested"
    assert obs.any_called_ae_accepted is True and obs.echo_status == 0
    assert exact_counts(report) == asdict(lab_data.counts)
    ids = {f.id for f in report.findings}
    assert {"PG-DIMSE-ANON-FIND", "PG-DIMSE-PHI-EXPOSED"} <= ids
    assert "PG-DIMSE-NO-TLS" not in ids


def test_orthanc_requiring_a_client_certificate(tmp_path: Path, lab_data: LabData) -> None:
    require_tools("Orthanc")
    with running_tls_orthanc(tmp_path, lab_data, remote_certificate_required=True) as (peer, _):
        report = scan(peer.port, ProbeOptions(timeouts=OPTIONS.timeouts, count=False))
    facts = report.observations.tls_facts
    assert facts is not None and facts.client_certificate.value == "required"
    assert report.observations.dicom is False and report.observations.exposure is None


def test_tls_facts_agree_with_nmap_ssl_enum_ciphers_and_ssl_cert(
    stunnel: StunnelPeer, tls_orthanc: tuple[OrthancPeer, LabCA]
) -> None:
    """nmap's scripts are an independent oracle: same versions, key, signature, dates, names."""
    require_tools("nmap")
    ports = {**stunnel.ports, "orthanc": tls_orthanc[0].port}
    nmap = nmap_tls("127.0.0.1", list(ports.values()))
    for name, port in ports.items():
        facts = asyncio.run(observe_tls("127.0.0.1", port, OPTIONS.timeouts))
        seen = nmap[port]
        assert facts is not None and facts.certificate is not None, name
        cert = facts.certificate
        assert list(facts.versions_accepted) == seen["versions"], name
        assert (cert.key_type, cert.key_bits) == (seen["key_type"], seen["key_bits"]), name
        assert cert.signature_hash and cert.signature_hash in (seen["sig_algo"] or "").lower()
        assert cert.not_after[:19] == seen["not_after"], name
        assert f"CN={seen['subject']['commonName']}" in cert.subject, name
        assert cert.self_signed == (seen["subject"] == seen["issuer"]), name
