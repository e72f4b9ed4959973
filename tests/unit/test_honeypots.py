"""Honeypot signatures and identical-configuration clusters: pure, on plain observations."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from pacsguard.dicom.phi import PhiCategory
from pacsguard.report.digest import digest
from pacsguard.report.jsonl import to_record
from pacsguard.report.table import ScanSummary
from pacsguard.scan import honeypots
from pacsguard.scan.checks import assess
from pacsguard.scan.model import (
    ANOMALY_AC_WITHOUT_IMPLEMENTATION_UID,
    ANOMALY_RJ_PROTOCOL_VERSION,
    AssociationAttempt,
    Exposure,
    Observations,
    Outcome,
    Target,
)


def open_host(host: str = "127.0.0.1", studies: int = 4, **fields: object) -> Observations:
    base = Observations(
        target=Target(host, 104),
        reachable=True,
        dicom=True,
        attempts=(AssociationAttempt("PACSGUARD", "ANY-SCP", Outcome.ACCEPTED),),
        any_called_ae_accepted=True,
        calling_ae_checked=False,
        accepted_called_aets=("ANY-SCP",),
        accepted_services=("verification", "study-root-find"),
        max_pdu=16384,
        implementation_class_uid="1.2.276.0.7230010.3.0.3.6.7",
        implementation_version_name="OFFIS_DCMTK_367",
        echo_status=0,
        exposure=Exposure(
            patients=2,
            studies=studies,
            series=studies,
            instances=studies * 3,
            phi_categories=frozenset({PhiCategory.PATIENT_NAME}),
            method="study-root",
        ),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


DICOMPOT = {
    "anomalies": (ANOMALY_AC_WITHOUT_IMPLEMENTATION_UID,),
    "max_pdu": 4 * 1024 * 1024,
    "implementation_class_uid": None,
    "implementation_version_name": None,
}
DICOMHAWK = {
    "max_pdu": 16382,
    "implementation_class_uid": "1.2.276.0.7230010.3.0.3.6.2",
    "implementation_version_name": "OFFIS_DCMTK_362",
}


def test_shipped_signatures_validate_and_cite_sources() -> None:
    data = json.loads(honeypots.default_path().read_text())
    assert honeypots.validate(data) == []
    names = {s.name for s in honeypots.default_signatures()}
    assert {"dicompot", "DICOMHawk"} <= names
    assert all(s.sources for s in honeypots.default_signatures())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (DICOMPOT, {"dicompot-association", "no-implementation-uid"}),
        ({"anomalies": (ANOMALY_RJ_PROTOCOL_VERSION,)}, {"dicompot-ae-reject"}),
        (DICOMHAWK, {"dicomhawk-dcmtk-362", "dcmtk-name-pynetdicom-pdu"}),
        (
            {"max_pdu": 16382, "implementation_version_name": "GE_PACS_REV_24"},
            {"dicomhawk-persona"},
        ),
    ],
)
def test_honeypots_are_flagged_with_their_reasons(
    fields: dict[str, object], expected: set[str]
) -> None:
    report = assess(open_host(**fields))
    assert set(report.honeypot_signatures) == expected
    assert report.honeypot_flagged
    assert not report.counted
    assert any(f.id == "PG-HONEYPOT-SUSPECTED" for f in report.findings)
    record = to_record(report)
    assert record["honeypot"]["flagged"] is True
    assert record["honeypot"]["reasons"]


@pytest.mark.parametrize(
    "fields",
    [
        {},  # Debian's dcmtk: DCMTK's own max PDU 16384
        {
            "max_pdu": 16382,
            "implementation_class_uid": str(PYNETDICOM_IMPLEMENTATION_UID),
            "implementation_version_name": PYNETDICOM_IMPLEMENTATION_VERSION,
        },  # an honest pynetdicom server
        {"max_pdu": 16378, "implementation_version_name": "dcm4che-5.31.0"},
    ],
)
def test_real_servers_are_not_flagged(fields: dict[str, object]) -> None:
    report = assess(open_host(**fields))
    assert report.honeypot_signatures == ()
    assert report.counted
    assert not any(f.id.startswith("PG-HONEYPOT") for f in report.findings)


def test_one_medium_signature_is_a_hint_not_a_flag() -> None:
    sigs = tuple(s for s in honeypots.default_signatures() if s.confidence == "medium")
    verdict = honeypots.judge(open_host(**DICOMPOT), sigs)
    assert [s.id for s in verdict.matched] == ["no-implementation-uid"]
    assert not verdict.flagged


def test_validate_lists_every_problem() -> None:
    data = json.loads(honeypots.default_path().read_text())
    broken = copy.deepcopy(data)
    broken["signatures"][0]["confidence"] = "certain"
    broken["signatures"][1]["sources"] = []
    broken["signatures"][2]["when"] = {"colour": "blue"}
    broken["signatures"][3]["when"]["implementation_version_name"] = "(open"
    assert len(honeypots.validate(broken)) == 4
    with pytest.raises(honeypots.HoneypotDataError):
        honeypots.parse(broken)


def test_config_signature_is_equal_on_identical_hosts_only() -> None:
    a = honeypots.config_signature(open_host("127.0.0.1"))
    b = honeypots.config_signature(open_host("127.0.0.2"))
    c = honeypots.config_signature(open_host("127.0.0.3", studies=5))
    assert a is not None and a == b != c
    assert honeypots.config_signature(open_host(exposure=None)) is None


def fleet() -> list[Observations]:
    """Four identical hosts (one image, same canned data), two distinct ones, one honeypot."""
    same = [open_host(f"127.0.0.{n}", studies=7) for n in range(1, 5)]
    distinct = [open_host("127.0.1.1", studies=3), open_host("127.0.1.2", studies=5)]
    return [*same, *distinct, open_host("127.0.2.1", studies=50, **DICOMPOT)]


def test_scan_summary_keeps_clusters_and_honeypots_out_of_totals() -> None:
    summary = ScanSummary()
    for obs in fleet():
        summary.add(assess(obs))
    text = summary.render()
    assert "2 expose data (4 patients, 8 studies, 24 instances)" in text
    assert "4 hosts in 1 identical-configuration cluster(s) (28 studies)" in text
    assert "1 likely honeypot(s)" in text
    assert sum(summary.severities.values()) == 6  # the honeypot's severity is not counted


def test_summaries_of_parts_merge_into_the_summary_of_the_whole() -> None:
    """How a sharded scan totals: each shard's summary on its worker, merged by the
    coordinator; here the cluster's members and the honeypot fall into different parts."""
    reports = [assess(obs) for obs in fleet()]
    reports.append(assess(replace(open_host("127.0.3.1"), reachable=False, dicom=False)))
    whole = ScanSummary()
    for report in reports:
        whole.add(report)
    merged = ScanSummary()
    for part in (reports[0::3], reports[1::3], reports[2::3], []):
        summary = ScanSummary()
        for report in part:
            summary.add(report)
        merged.merge(summary)
    assert merged.render() == whole.render()
    assert merged.severities == whole.severities
    assert [c.hosts for c in merged.tally.clusters()] == [4]
    assert (merged.targets, merged.reachable, merged.honeypots) == (8, 7, 1)


def test_report_digest_agrees_with_the_scan_summary() -> None:
    result = digest(to_record(assess(obs)) for obs in fleet())
    assert (result.exposed, result.studies, result.instances) == (2, 8, 24)
    assert [c.hosts for c in result.clusters] == [4]
    assert result.honeypots == 1
