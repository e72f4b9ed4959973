"""Human-readable terminal output: a table of targets and a one-paragraph summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from pacsguard.scan.model import HostReport, Severity

_STYLE = {
    Severity.CRITICAL: "bold red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


@dataclass
class ScanSummary:
    """Running totals over a scan; fed one report at a time so nothing else is kept."""

    targets: int = 0
    reachable: int = 0
    dicom: int = 0
    accepted: int = 0
    exposing: int = 0
    studies: int = 0
    instances: int = 0
    patients: int = 0
    severities: Counter[Severity] = field(default_factory=Counter)

    def add(self, report: HostReport) -> None:
        obs = report.observations
        self.targets += 1
        self.reachable += obs.reachable
        self.dicom += obs.dicom
        self.accepted += bool(obs.accepted_called_aets)
        if obs.exposure is not None and obs.exposure.studies:
            self.exposing += 1
            self.studies += obs.exposure.studies
            self.instances += obs.exposure.instances
            self.patients += obs.exposure.patients
        if report.worst is not None:
            self.severities[report.worst] += 1

    def render(self) -> str:
        worst = ", ".join(
            f"{self.severities[s]} {s.value}"
            for s in sorted(self.severities, key=lambda s: -s.rank)
        )
        return (
            f"{self.targets} targets, {self.reachable} reachable, {self.dicom} speak DICOM, "
            f"{self.accepted} accept a stranger, {self.exposing} expose data "
            f"({self.patients} patients, {self.studies} studies, {self.instances} instances)."
            + (f" Hosts by worst finding: {worst}." if worst else "")
        )


def _status(report: HostReport) -> str:
    obs = report.observations
    if obs.accepted_called_aets:
        return "accepted as " + ",".join(obs.accepted_called_aets)
    if obs.attempts:
        last = obs.attempts[-1]
        return f"{last.outcome.value}" + (f" ({last.reason})" if last.reason else "")
    return "-"


def render_table(reports: Sequence[HostReport], console: Console) -> None:
    """Print one row per target that answered at all (closed ports are only counted)."""
    table = Table(title="pacsguard scan", show_lines=False)
    table.add_column("target")
    table.add_column("association")
    table.add_column("echo")
    table.add_column("patients/studies/instances", justify="right")
    table.add_column("worst")
    table.add_column("findings")
    for report in sorted(reports, key=lambda r: r.observations.target):
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
            " ".join(f.id.removeprefix("PG-") for f in report.findings),
        )
    console.print(table)
