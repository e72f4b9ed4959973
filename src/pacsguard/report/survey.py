"""Survey tables: the published surveys' measures per country and in total, for one run.

The columns are those of the internet-wide PACS surveys (addresses probed, systems speaking
DICOM, systems accepting a stranger, accessible study records and images, systems showing
SSN-shaped identifiers, share with TLS, share checking AE titles, share accepting C-STORE from
strangers). Each country is a `Digest` of its own, and the whole run another, so the survey
counts exactly what `pacsguard report` counts: honeypot-flagged hosts and identical-configuration
clusters are shown but kept out of the exposure totals (`include_flagged` puts them back). A
cluster is decided over the whole run, so a fleet spread over countries is left out of each.
Hosts without a `location` member are under country "unknown".
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any, Final, TextIO

from pacsguard.errors import UsageError
from pacsguard.report.charts import SEVERITY_COLOURS, bar_chart
from pacsguard.report.digest import Digest, HostRow, row_from_record
from pacsguard.report.html import _STYLE, clusters_section
from pacsguard.report.markdown import _md, clusters_lines
from pacsguard.report.tabular import _cell
from pacsguard.scan.honeypots import ClusterTally

TOTAL: Final = "total"


@dataclass
class SurveyLine:
    """One row of the survey table: a country, or the total."""

    key: str
    digest: Digest
    addresses: set[str] = field(default_factory=set)
    #: DICOM-over-TLS services among the flagged hosts (the digest counts TLS over all hosts).
    flagged_tls: int = 0

    def share(self, part: int, of: int) -> float:
        return 0.0 if of <= 0 else round(100.0 * part / of, 1)

    def values(self) -> dict[str, Any]:
        d = self.digest
        counted = max(d.dicom - d.honeypots, 0)
        return {
            "country": self.key,
            "addresses_probed": len(self.addresses),
            "targets_probed": d.targets,
            "speak_dicom": d.dicom,
            "accept_stranger": d.accepting,
            "expose_data": d.exposed,
            "study_records": d.studies,
            "instances": d.instances,
            "ssn_shaped_ids": d.ssn_shaped,
            "tls_share_pct": self.share(d.with_tls - self.flagged_tls, counted),
            "ae_check_share_pct": self.share(d.ae_checked, counted),
            "open_store_share_pct": self.share(d.open_store, counted),
            "honeypots": d.honeypots,
            "clustered_hosts": sum(c.hosts for c in d.clusters),
            "lower_bound": d.lower_bound,
        }


COLUMNS: Final = (
    ("country", "country"),
    ("addresses_probed", "addresses probed"),
    ("speak_dicom", "speak DICOM"),
    ("accept_stranger", "accept a stranger"),
    ("expose_data", "expose data"),
    ("study_records", "study records"),
    ("instances", "instances (images)"),
    ("ssn_shaped_ids", "SSN-shaped IDs"),
    ("tls_share_pct", "TLS %"),
    ("ae_check_share_pct", "check AE titles %"),
    ("open_store_share_pct", "accept C-STORE %"),
    ("honeypots", "honeypots (not counted)"),
    ("clustered_hosts", "in clusters (not counted)"),
)


@dataclass
class SurveyTable:
    total: SurveyLine
    countries: list[SurveyLine]

    @property
    def lines(self) -> list[SurveyLine]:
        return [*self.countries, self.total]

    def flagged_hosts(self) -> list[HostRow]:
        return [h for h in self.total.digest.hosts if h.honeypot]


def _row(record: dict[str, Any], number: int, source: str) -> HostRow:
    try:
        return row_from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{source} record {number}: malformed ({exc!r})") from None


def _unflag(row: HostRow) -> HostRow:
    fields = {f: getattr(row, f) for f in row.__dataclass_fields__}
    return HostRow(**{**fields, "honeypot_reasons": ()})


def build_survey(
    records: Iterable[dict[str, Any]], *, source: str = "run", include_flagged: bool = False
) -> SurveyTable:
    """The survey table of one run's records (streamed once)."""
    total = SurveyLine(TOTAL, Digest(keep_unreachable=False))
    countries: dict[str, SurveyLine] = {}
    for number, record in enumerate(records, start=1):
        row = _row(record, number, source)
        if include_flagged and row.honeypot:
            row = _unflag(row)
        line = countries.get(row.country)
        if line is None:
            line = countries[row.country] = SurveyLine(
                row.country, Digest(tally=ClusterTally(min_hosts=1), keep_unreachable=False)
            )
        for part in (total, line):
            part.digest.add(row)
            part.addresses.add(row.host)
            part.flagged_tls += row.honeypot and row.tls and row.dicom
    if include_flagged:
        total.digest.tally = ClusterTally()  # empty: no cluster is left out
    total.digest.finish()
    for line in countries.values():
        line.digest.finish(within=total.digest.tally)
    ordered = sorted(countries.values(), key=lambda c: (-c.digest.exposed, c.key))
    return SurveyTable(total, ordered)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_survey_csv(table: SurveyTable, stream: TextIO) -> int:
    """One row per country and a last `total` row; machine-readable column names, plus
    `targets_probed` (address and port pairs) and `lower_bound`."""
    keys = [key for key, _ in COLUMNS]
    keys.insert(2, "targets_probed")
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*keys, "lower_bound"])
    for line in table.lines:
        values = line.values()
        writer.writerow(
            [_cell(_fmt(values[key])) for key in keys] + [str(values["lower_bound"]).lower()]
        )
    return len(table.lines)


def survey_markdown_lines(table: SurveyTable) -> list[str]:
    return [
        "| " + " | ".join(label for _, label in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *[
            "| " + " | ".join(_md(_fmt(line.values()[key])) for key, _ in COLUMNS) + " |"
            for line in table.lines
        ],
    ]


def _flagged_md(table: SurveyTable) -> list[str]:
    flagged = table.flagged_hosts()
    if not flagged:
        return []
    return [
        "## Hosts flagged as honeypots",
        "",
        "| endpoint | country | reasons |",
        "|---|---|---|",
        *[
            f"| {_md(h.endpoint)} | {_md(h.country)} | {_md('; '.join(h.honeypot_reasons))} |"
            for h in flagged
        ],
        "",
    ]


def render_survey_markdown(table: SurveyTable, *, title: str) -> str:
    total = table.total.digest
    lines = [
        f"# {_md(title)}",
        "",
        "Counts, categories and redacted evidence only: no patient value was kept. Hosts "
        "flagged as honeypots and identical-configuration clusters are shown but not counted "
        "in the exposure columns."
        + (
            " Counts marked lower bounds: the real numbers may be higher."
            if total.lower_bound
            else ""
        ),
        "",
        "## Survey table",
        "",
        *survey_markdown_lines(table),
        "",
        *clusters_lines(total),
        *_flagged_md(table),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _flagged_html(table: SurveyTable) -> str:
    flagged = table.flagged_hosts()
    if not flagged:
        return ""
    rows = "".join(
        f"<tr><td>{escape(h.endpoint)}</td><td>{escape(h.country)}</td>"
        f"<td>{escape('; '.join(h.honeypot_reasons))}</td></tr>"
        for h in flagged
    )
    return (
        '<h2 id="honeypots">Hosts flagged as honeypots</h2><p>Shown, not counted.</p>'
        f"<table><tr><th>endpoint</th><th>country</th><th>reasons</th></tr>{rows}</table>"
    )


def survey_html_table(table: SurveyTable) -> str:
    head = "".join(f"<th>{escape(label)}</th>" for _, label in COLUMNS)
    body = "".join(
        "<tr"
        + (' class="total"' if line is table.total else "")
        + ">"
        + "".join(f"<td>{escape(_fmt(line.values()[key]))}</td>" for key, _ in COLUMNS)
        + "</tr>"
        for line in table.lines
    )
    return f'<table id="survey-table"><tr>{head}</tr>{body}</table>'


def render_survey_html(table: SurveyTable, *, title: str, source: str = "") -> str:
    """One self-contained page: the survey table, charts per country, clusters, honeypots."""
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    top = table.countries[:15]
    exposed_bars = [(c.key, c.digest.exposed, SEVERITY_COLOURS["high"]) for c in top]
    study_bars = [(c.key, c.digest.studies, SEVERITY_COLOURS["critical"]) for c in top]
    exposed_chart = bar_chart(
        "Hosts exposing data, by country", exposed_bars, chart_id="chart-exposed", unit=" hosts"
    )
    studies_chart = bar_chart(
        "Study records exposed, by country", study_bars, chart_id="chart-studies"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_STYLE}tr.total td{{font-weight:600}}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">Generated {escape(generated)}{" from " + escape(source) if source else ""} by
pacsguard. Counts, categories and redacted evidence only: no patient value was kept. Hosts
flagged as honeypots and identical-configuration clusters are shown but not counted in the
exposure columns; shares are of the systems speaking DICOM that are not flagged.</p>
<h2 id="survey">Survey table</h2>
{survey_html_table(table)}
<div class="charts">
{exposed_chart}
{studies_chart}
</div>
{clusters_section(table.total.digest)}
{_flagged_html(table)}
</body></html>
"""
