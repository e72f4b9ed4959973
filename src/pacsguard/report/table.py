"""Human-readable terminal output: a table of targets and a one-paragraph summary.

rich is imported only to draw the table: the summary is plain text, and `pacsguard scan`
without `--format table` never loads rich.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pacsguard.report.digest import web_summary
from pacsguard.report.jsonl import http_record
from pacsguard.scan.honeypots import ClusterTally
from pacsguard.scan.model import Finding, HostReport, Severity

if TYPE_CHECKING:
    from rich.console import Console

_STYLE = {
    Severity.CRITICAL: "bold red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


_TOTALS = (
    "targets",
    "reachable",
    "dicom",
    "accepted",
    "exposing",
    "studies",
    "instances",
    "patients",
    "honeypots",
)


@dataclass
class ScanSummary:
    """Running totals over a scan; fed one report at a time so nothing else is kept.

    Hosts flagged as honeypots are counted apart and left out of the exposure totals and the
    severity counts (so of the exit code); hosts in identical-configuration clusters are shown
    apart and left out of the exposure totals (`pacsguard.scan.honeypots`)."""

    targets: int = 0
    reachable: int = 0
    dicom: int = 0
    accepted: int = 0
    exposing: int = 0
    studies: int = 0
    instances: int = 0
    patients: int = 0
    honeypots: int = 0
    severities: Counter[Severity] = field(default_factory=Counter)
    tally: ClusterTally = field(default_factory=ClusterTally)

    def add(self, report: HostReport) -> None:
        obs = report.observations
        self.targets += 1
        self.reachable += obs.reachable
        self.dicom += obs.dicom
        if not report.counted:
            self.honeypots += 1
            return
        self.accepted += bool(obs.accepted_called_aets)
        if obs.exposure is not None and obs.exposure.studies:
            self.exposing += 1
            self.studies += obs.exposure.studies
            self.instances += obs.exposure.instances
            self.patients += obs.exposure.patients
            self.tally.add(
                report.config_signature,
                obs.exposure.patients,
                obs.exposure.studies,
                obs.exposure.instances,
            )
        if report.worst is not None:
            self.severities[report.worst] += 1

    def merge(self, other: ScanSummary) -> None:
        """Add another summary's totals (a shard's, made on a worker) to this one."""
        for name in _TOTALS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.severities.update(other.severities)
        self.tally.merge(other.tally)

    def render(self) -> str:
        worst = ", ".join(
            f"{self.severities[s]} {s.value}"
            for s in sorted(self.severities, key=lambda s: -s.rank)
        )
        clusters = self.tally.clusters()
        clustered = sum(c.hosts for c in clusters)
        exposing = self.exposing - clustered
        patients = self.patients - sum(c.patients for c in clusters)
        studies = self.studies - sum(c.studies for c in clusters)
        instances = self.instances - sum(c.instances for c in clusters)
        text = (
            f"{self.targets} targets, {self.reachable} reachable, {self.dicom} speak DICOM, "
            f"{self.accepted} accept a stranger, {exposing} expose data "
            f"({patients} patients, {studies} studies, {instances} instances)."
            + (f" Hosts by worst finding: {worst}." if worst else "")
        )
        if clusters:
            text += (
                f" Not in those totals: {clustered} hosts in {len(clusters)} "
                f"identical-configuration cluster(s) ({sum(c.studies for c in clusters)} "
                "studies)."
            )
        if self.honeypots:
            text += f" Not counted at all: {self.honeypots} likely honeypot(s)."
        return text


_REASONS = {
    "called-ae-title-not-recognized": "called AE checked",
    "calling-ae-title-not-recognized": "calling AE checked",
}


def _status(report: HostReport) -> str:
    obs = report.observations
    if obs.http is not None:  # a web target: what it showed, in words
        summary = web_summary(http_record(obs.http)) or "-"
        return summary if len(summary) <= 60 else summary[:59] + "…"
    tls = "TLS " if obs.tls else ""
    if obs.accepted_called_aets:
        return f"{tls}accepted: " + ",".join(obs.accepted_called_aets)
    facts = obs.tls_facts
    if facts is not None and facts.client_certificate.value == "required" and not obs.dicom:
        return "TLS: client certificate required"
    if obs.attempts:
        last = obs.attempts[-1]
        if last.reason in _REASONS:
            return f"{tls}rejected: {_REASONS[last.reason]}"
        return f"{tls}{last.outcome.value}" + (f": {last.reason}" if last.reason else "")
    return "-"


def _sort_key(report: HostReport) -> tuple[int, object, int]:
    target = report.observations.target
    try:
        address: object = ipaddress.ip_address(target.host)
        version = address.version  # type: ignore[attr-defined]
    except ValueError:
        address, version = target.host, 0
    return (version, address, target.port)


def render_table(reports: Sequence[HostReport], console: Console) -> None:
    """One row per target that answered at all (closed ports are only counted), then a table
    of the distinct findings with how many hosts have each."""
    from rich.table import Table

    table = Table(title="Targets that answered", title_justify="left")
    table.add_column("target", no_wrap=True)
    table.add_column("association")
    table.add_column("echo")
    table.add_column("pat/stu/inst", justify="right", no_wrap=True)
    table.add_column("worst")
    table.add_column("findings", justify="right")
    findings: dict[str, tuple[Finding, int]] = {}
    for report in sorted(reports, key=_sort_key):
        obs = report.observations
        if not obs.reachable:
            continue
        exposure = obs.exposure
        counts = "-"
        if exposure is not None and exposure.method != "none":
            plus = "+" if exposure.lower_bound else ""
            counts = f"{exposure.patients}/{exposure.studies}/{exposure.instances}{plus}"
        worst = report.worst
        table.add_row(
            str(obs.target),
            _status(report),
            "ok" if obs.echo_status == 0 else ("-" if obs.echo_status is None else "failed"),
            counts,
            f"[{_STYLE[worst]}]{worst.value}[/]" if worst else "-",
            str(len(report.findings)),
        )
        for f in report.findings:
            _, n = findings.get(f.id, (f, 0))
            findings[f.id] = (f, n + 1)
    console.print(table)
    if not findings:
        return
    summary = Table(title="Findings", title_justify="left")
    summary.add_column("id", no_wrap=True)
    summary.add_column("severity")
    summary.add_column("CVSS", justify="right")
    summary.add_column("hosts", justify="right")
    summary.add_column("what")
    ordered = sorted(findings.values(), key=lambda fn: (-fn[0].cvss_score, fn[0].id))
    for finding, hosts in ordered:
        title = finding.title
        if finding.id == "PG-DIMSE-ANON-FIND":
            title = "Anonymous C-FIND exposes studies and instances"
        summary.add_row(
            finding.id,
            f"[{_STYLE[finding.severity]}]{finding.severity.value}[/]",
            f"{finding.cvss_score:.1f}",
            str(hosts),
            title,
        )
    console.print(summary)
