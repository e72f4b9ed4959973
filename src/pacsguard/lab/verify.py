"""Compare scan results with a farm's ground truth: the demo's and the benchmark's yardstick."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pacsguard.scan.model import HostReport


@dataclass(frozen=True, slots=True)
class Agreement:
    hosts: int
    agreeing: int
    mismatches: tuple[str, ...]


def _tls_disagreements(report: HostReport, truth: Mapping[str, Any] | None) -> list[str]:
    facts = report.observations.tls_facts
    if truth is None:
        return [] if facts is None else ["TLS seen on a plain TCP host"]
    if facts is None:
        return ["TLS not seen"]
    out = []
    if list(facts.versions_accepted) != truth["versions"]:
        out.append(f"TLS versions {list(facts.versions_accepted)} != {truth['versions']}")
    if facts.client_certificate.value != truth["client_certificate"]:
        out.append(f"client certificate {facts.client_certificate.value}")
    cert = facts.certificate
    seen = (
        None
        if cert is None
        else {
            "self_signed": cert.self_signed,
            "expired": cert.expired,
            "key_type": cert.key_type,
            "key_bits": cert.key_bits,
            "signature_hash": cert.signature_hash,
        }
    )
    wanted = {k: truth[k] for k in ("self_signed", "expired", "key_type", "key_bits")}
    wanted["signature_hash"] = truth["signature_hash"]
    if seen != wanted:
        out.append(f"certificate facts {seen} != {wanted}")
    return out


def _disagreements(report: HostReport, truth: Mapping[str, Any]) -> list[str]:
    obs = report.observations
    out = _tls_disagreements(report, truth.get("tls"))
    if obs.dicom != truth["expected_dicom"]:
        out.append(f"dicom {obs.dicom} != {truth['expected_dicom']}")
    if truth["accepts_any_called_ae"] is not None and (
        obs.any_called_ae_accepted != truth["accepts_any_called_ae"]
    ):
        out.append("called-AE policy differs")
    if truth["calling_ae_checked"] is not None and (
        obs.calling_ae_checked != truth["calling_ae_checked"]
    ):
        out.append("calling-AE policy differs")
    if truth["query_exposed"]:
        exposure = obs.exposure
        counts = (
            {
                "patients": exposure.patients,
                "studies": exposure.studies,
                "series": exposure.series,
                "instances": exposure.instances,
            }
            if exposure is not None
            else None
        )
        if counts != truth["exposed_counts"]:
            out.append(f"counts {counts} != {truth['exposed_counts']}")
        elif exposure is not None and sorted(c.value for c in exposure.phi_categories) != sorted(
            truth["phi_categories"]
        ):
            out.append("PHI categories differ")
    return out


def compare(reports: Iterable[HostReport], truth_hosts: Iterable[Mapping[str, Any]]) -> Agreement:
    """How many hosts the scan got exactly right, and what differed for the others."""
    by_endpoint = {(h["address"], h["port"]): h for h in truth_hosts}
    agreeing = 0
    mismatches: list[str] = []
    seen = 0
    for report in reports:
        target = report.observations.target
        truth = by_endpoint.get((target.host, target.port))
        if truth is None:
            continue
        seen += 1
        problems = _disagreements(report, truth)
        if problems:
            mismatches.append(f"{target} ({truth['profile']}): " + "; ".join(problems))
        else:
            agreeing += 1
    missing = len(by_endpoint) - seen
    if missing:
        mismatches.append(f"{missing} hosts of the truth were not scanned")
    return Agreement(hosts=len(by_endpoint), agreeing=agreeing, mismatches=tuple(mismatches))
