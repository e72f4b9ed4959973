"""Honeypot signatures on the wire: a real pynetdicom AE configured the way DICOMHawk configures
its own (it is built on pynetdicom), next to an honest pynetdicom AE, probed by the scanner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from pacsguard.dicom.client import Timeouts
from pacsguard.scan.checks import assess
from pacsguard.scan.model import HostReport, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse

OPTIONS = ProbeOptions(timeouts=Timeouts(connect=2.0, read=2.0), total_timeout=15.0, count=False)


def serve(ae: AE) -> Iterator[int]:
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


@pytest.fixture
def dicomhawk_like() -> Iterator[int]:
    """DICOMHawk's dicom_application.py: a pynetdicom AE that names itself DCMTK 3.6.2."""
    ae = AE()
    ae.implementation_version_name = "OFFIS_DCMTK_362"
    ae.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.2"
    yield from serve(ae)


@pytest.fixture
def honest_pynetdicom() -> Iterator[int]:
    yield from serve(AE())


def probe(port: int) -> HostReport:
    return assess(asyncio.run(probe_dimse(Target("127.0.0.1", port), OPTIONS)))


def test_dicomhawk_configuration_is_flagged(dicomhawk_like: int) -> None:
    report = probe(dicomhawk_like)
    assert report.observations.max_pdu == 16382  # pynetdicom's default, not DCMTK's 16384
    assert "dicomhawk-dcmtk-362" in report.honeypot_signatures
    assert report.honeypot_flagged and not report.counted


def test_an_honest_pynetdicom_server_is_not(honest_pynetdicom: int) -> None:
    report = probe(honest_pynetdicom)
    assert report.observations.dicom
    assert report.product is not None and report.product.id == "pynetdicom"
    assert report.honeypot_signatures == ()
    assert report.counted
