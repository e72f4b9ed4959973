"""The scanner finds our own archive's DICOM-TLS port without being told, and sees BCP 195."""

from __future__ import annotations

import asyncio

from pacsguard.dicom.client import Timeouts
from pacsguard.scan.checks import assess
from pacsguard.scan.model import Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse

from .conftest import StartArchive


def test_scanner_observes_the_archive_tls_port(start: StartArchive) -> None:
    archive = start()
    endpoint = next(e for e in archive.endpoints if e.tls)
    options = ProbeOptions(timeouts=Timeouts(connect=3.0, read=5.0), total_timeout=60.0)
    report = assess(asyncio.run(probe_dimse(Target(endpoint.host, endpoint.port), options)))
    obs = report.observations
    facts = obs.tls_facts
    assert facts is not None and obs.tls is True
    # BCP 195: TLS 1.2 and 1.3 only; our CA's EC P-256 certificate; client certificates are
    # requested (for AEs registered with mTLS) but not required by default.
    assert facts.versions_accepted == ("1.2", "1.3")
    assert facts.versions_refused == ("1.0", "1.1")
    assert facts.client_certificate.value == "requested"
    cert = facts.certificate
    assert cert is not None
    assert (cert.key_type, cert.key_bits, cert.signature_hash) == ("ec", 256, "sha256")
    assert cert.self_signed is False and cert.expired is False
    # Inside TLS the archive answers DICOM and refuses the stranger.
    assert obs.dicom is True and obs.accepted_called_aets == ()
    assert [f.id for f in report.findings] == []
