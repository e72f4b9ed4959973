"""The scanner against lab honeypots (dicompot-like and DICOMHawk-like) among open servers:
each honeypot is flagged with its signature, and none reaches the exposure totals."""

from __future__ import annotations

from pacsguard.dicom.client import Timeouts
from pacsguard.lab.profiles import Profile, plan_farm
from pacsguard.lab.truth import farm_truth
from pacsguard.report.table import ScanSummary
from pacsguard.scan.model import Target
from pacsguard.scan.probe import ProbeOptions

from .conftest import RunningFarm
from .test_scan_lab import scan

#: Generous: the farm shares this process with the scanner, and CI machines are loaded.
PATIENT = ProbeOptions(timeouts=Timeouts(connect=5.0, read=10.0), total_timeout=60.0)
EXPECTED = {"dicompot": "dicompot-association", "dicomhawk": "dicomhawk-dcmtk-362"}


def test_lab_honeypots_are_flagged_and_left_out_of_totals(
    running_farm: type[RunningFarm],
) -> None:
    mix = {Profile.OPEN: 1.0, Profile.HONEYPOT_DICOMPOT: 1.0, Profile.HONEYPOT_DICOMHAWK: 1.0}
    lab = running_farm(plan_farm(9, base_address="127.78.7.1", port=0, seed=3, mix=mix))
    truth = {h["address"]: h for h in farm_truth(lab.plan)["hosts"]}
    reports = scan([Target(h.address, h.port) for h in lab.plan.hosts], PATIENT)
    summary = ScanSummary()
    honest_studies = 0
    for host, expected in truth.items():
        report = reports[host]
        summary.add(report)
        if expected["honeypot"] is None:
            assert not report.honeypot_flagged, host
            assert report.observations.exposure is not None
            honest_studies += report.observations.exposure.studies
            continue
        assert report.honeypot_flagged, host
        assert EXPECTED[expected["honeypot"]] in report.honeypot_signatures, host
        # The canned archive is still counted on the wire, and is the same on every decoy.
        assert report.observations.exposure is not None
        assert report.observations.exposure.studies == expected["exposed_counts"]["studies"]
    assert summary.honeypots == 6
    assert summary.studies == honest_studies
    assert "Not counted at all: 6 likely honeypot(s)." in summary.render()
