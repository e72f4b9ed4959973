from __future__ import annotations

import json

from pacsguard.dicom.phi import PhiCategory
from pacsguard.scan.checks import CHECKS, assess, judge_everything, nothing_to_judge, severity_for
from pacsguard.scan.model import (
    AssociationAttempt,
    Exposure,
    Observations,
    Outcome,
    Severity,
    Target,
)

TARGET = Target("127.0.0.1", 11112)


def open_pacs(**changes: object) -> Observations:
    values: dict[str, object] = {
        "target": TARGET,
        "reachable": True,
        "dicom": True,
        "attempts": (
            AssociationAttempt("PACSGUARD", "ANY-SCP", Outcome.ACCEPTED, None, ("verification",)),
        ),
        "any_called_ae_accepted": True,
        "calling_ae_checked": False,
        "accepted_called_aets": ("ANY-SCP",),
        "accepted_services": ("verification", "study-root-find", "storage"),
        "echo_status": 0,
        "exposure": Exposure(
            patients=3,
            studies=5,
            series=9,
            instances=20,
            phi_categories=frozenset({PhiCategory.PATIENT_NAME, PhiCategory.PATIENT_ID}),
            method="study-root",
            queries=1,
        ),
    }
    values.update(changes)
    return Observations(**values)  # type: ignore[arg-type]


def ids(obs: Observations) -> set[str]:
    return {f.id for f in assess(obs).findings}


def test_open_pacs_gets_every_open_finding() -> None:
    assert ids(open_pacs()) == {
        "PG-DIMSE-ANON-ASSOC",
        "PG-DIMSE-ANY-CALLED-AE",
        "PG-DIMSE-OPEN-ECHO",
        "PG-DIMSE-ANON-FIND",
        "PG-DIMSE-PHI-EXPOSED",
        "PG-DIMSE-OPEN-STORE",
        "PG-DIMSE-NO-TLS",
    }


def test_findings_are_sorted_most_severe_first_and_scores_match_severity() -> None:
    report = assess(open_pacs())
    ranks = [f.severity.rank for f in report.findings]
    assert ranks == sorted(ranks, reverse=True)
    for finding in report.findings:
        assert finding.cvss_vector.startswith("CVSS:3.1/")
        assert severity_for(finding.cvss_score) is finding.severity
        assert finding.references and finding.remediation
    anon_find = next(f for f in report.findings if f.id == "PG-DIMSE-ANON-FIND")
    assert anon_find.severity is Severity.HIGH
    assert "5 studies / 20 instances" in anon_find.title


def test_ssn_shaped_ids_raise_the_phi_finding() -> None:
    plain = assess(open_pacs()).findings
    exposure = open_pacs().exposure
    assert exposure is not None
    ssn = Exposure(
        **{
            **{f: getattr(exposure, f) for f in exposure.__dataclass_fields__},
            "phi_categories": frozenset({PhiCategory.PATIENT_ID_SSN_SHAPED}),
        }
    )
    worse = assess(open_pacs(exposure=ssn)).findings
    score = {f.id: f.cvss_score for f in plain}["PG-DIMSE-PHI-EXPOSED"]
    worse_score = {f.id: f.cvss_score for f in worse}["PG-DIMSE-PHI-EXPOSED"]
    assert worse_score > score


def test_lower_bound_is_said_in_the_title() -> None:
    exposure = Exposure(studies=7, instances=70, lower_bound=True, method="study-root")
    finding = next(
        f for f in assess(open_pacs(exposure=exposure)).findings if f.id == "PG-DIMSE-ANON-FIND"
    )
    assert "at least 7 studies" in finding.title


def test_rejecting_pacs_only_gets_the_transport_finding() -> None:
    locked = Observations(
        target=TARGET,
        reachable=True,
        dicom=True,
        attempts=(
            AssociationAttempt(
                "PACSGUARD", "ANY-SCP", Outcome.REJECTED, "calling-ae-title-not-recognized"
            ),
        ),
        calling_ae_checked=True,
    )
    assert ids(locked) == {"PG-DIMSE-NO-TLS"}


def test_default_ae_finding_only_when_arbitrary_titles_failed() -> None:
    obs = open_pacs(any_called_ae_accepted=False, accepted_called_aets=("ORTHANC",))
    found = ids(obs)
    assert "PG-DIMSE-DEFAULT-AE" in found
    assert "PG-DIMSE-ANY-CALLED-AE" not in found


def test_non_dicom_and_closed_targets_get_no_findings() -> None:
    closed = Observations(target=TARGET, reachable=False, dicom=False)
    garbage = Observations(target=TARGET, reachable=True, dicom=False, anomalies=("not-dicom",))
    assert assess(closed).findings == ()
    assert assess(garbage).findings == ()


def test_targets_that_never_answered_are_judged_alike_with_or_without_the_shortcut() -> None:
    """`assess` skips the checks for them; every check, run anyway, finds nothing either."""
    never = [
        Observations(
            target=TARGET,
            reachable=False,
            dicom=False,
            attempts=tuple(
                AssociationAttempt("PACSGUARD", "ANY-SCP", outcome, reason, tls=tls)
                for tls in (False, True)[: 1 + with_tls]
            ),
            error=error,
            duration_s=0.25,
        )
        for outcome, reason in (
            (Outcome.REFUSED, "connection refused"),
            (Outcome.TIMEOUT, "no TCP answer within the connect timeout"),
            (Outcome.UNREACHABLE, "host unreachable"),
        )
        for with_tls in (0, 1)
        for error in (None, "total time budget of 1s exhausted")
    ]
    never.append(
        Observations(target=Target("127.0.0.1", 8042, "http"), reachable=False, dicom=False)
    )
    for obs in never:
        assert nothing_to_judge(obs)
        assert assess(obs) == judge_everything(obs)
    assert not nothing_to_judge(open_pacs())


def test_evidence_is_json_and_holds_no_values_beyond_counts_and_names() -> None:
    for finding in assess(open_pacs()).findings:
        text = json.dumps(finding.evidence)
        assert "Synthetic" not in text
    assert len(CHECKS) >= 6
