"""Trend between two runs: which endpoints became exposed, were fixed, stay exposed or are gone,
and how the exposed study records and instances grew, in total and per country.

An endpoint (host and port) is *exposed* when it gives study or patient records to a stranger
and is not flagged as a honeypot. Between run A and run B an endpoint exposed in A is *fixed*
when B reached it and it no longer exposes data, and *gone* when B did not reach it (or did not
probe it): a host that went dark is not a fix. Totals are the survey totals (clusters and
honeypots left out), so "24 M -> 35 M" compares like with like.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Final, TextIO

from pacsguard.report.charts import bar_chart, paired_bar_chart
from pacsguard.report.digest import HostRow
from pacsguard.report.html import _STYLE
from pacsguard.report.markdown import _md
from pacsguard.report.survey import TOTAL, SurveyTable
from pacsguard.report.tabular import _cell

CHANGES: Final = ("newly_exposed", "fixed", "still_exposed", "gone")
_CHANGE_COLOURS: Final = {
    "newly_exposed": "#d32f2f",
    "fixed": "#388e3c",
    "still_exposed": "#f57c00",
    "gone": "#757575",
}


@dataclass(frozen=True, slots=True)
class Growth:
    key: str
    studies_a: int
    studies_b: int
    instances_a: int
    instances_b: int
    exposed_a: int
    exposed_b: int

    @staticmethod
    def pct(a: int, b: int) -> str:
        if a == 0:
            return "new" if b else "0%"
        return f"{100.0 * (b - a) / a:+.1f}%"


@dataclass
class Trend:
    run_a: str
    run_b: str
    #: change -> [(endpoint, country, studies in A, studies in B)]
    hosts: dict[str, list[tuple[str, str, int, int]]]
    growth: list[Growth]  # per country, then the total last

    @property
    def total(self) -> Growth:
        return self.growth[-1]


def _exposed(row: HostRow) -> bool:
    return row.exposed and not row.honeypot


def build_trend(a: SurveyTable, b: SurveyTable, *, run_a: str, run_b: str) -> Trend:
    rows_a = {h.endpoint: h for h in a.total.digest.hosts}
    rows_b = {h.endpoint: h for h in b.total.digest.hosts}
    hosts: dict[str, list[tuple[str, str, int, int]]] = {c: [] for c in CHANGES}
    for endpoint, row_b in rows_b.items():
        row_a = rows_a.get(endpoint)
        if _exposed(row_b):
            was = row_a is not None and _exposed(row_a)
            studies_a = row_a.studies if row_a is not None and was else 0
            hosts["still_exposed" if was else "newly_exposed"].append(
                (endpoint, row_b.country, studies_a, row_b.studies)
            )
    for endpoint, before in rows_a.items():
        if not _exposed(before):
            continue
        after = rows_b.get(endpoint)
        if after is None or not after.reachable:
            hosts["gone"].append((endpoint, before.country, before.studies, 0))
        elif not _exposed(after):
            hosts["fixed"].append((endpoint, before.country, before.studies, 0))
    for rows in hosts.values():
        rows.sort(key=lambda r: (-max(r[2], r[3]), r[0]))
    by_a = {line.key: line.digest for line in a.countries}
    by_b = {line.key: line.digest for line in b.countries}
    growth = []
    for key in sorted(by_a.keys() | by_b.keys()):
        da, db = by_a.get(key), by_b.get(key)
        growth.append(
            Growth(
                key,
                da.studies if da else 0,
                db.studies if db else 0,
                da.instances if da else 0,
                db.instances if db else 0,
                da.exposed if da else 0,
                db.exposed if db else 0,
            )
        )
    growth.sort(key=lambda g: (-(g.studies_b - g.studies_a), g.key))
    ta, tb = a.total.digest, b.total.digest
    growth.append(
        Growth(TOTAL, ta.studies, tb.studies, ta.instances, tb.instances, ta.exposed, tb.exposed)
    )
    return Trend(run_a, run_b, hosts, growth)


def write_trend_csv(trend: Trend, stream: TextIO) -> int:
    """Rows of kind `host` (one per endpoint that changed or stayed exposed) and `growth`."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(
        ("kind", "key", "country_or_change", "studies_a", "studies_b", "instances_a",
         "instances_b", "exposed_a", "exposed_b")
    )  # fmt: skip
    count = 0
    for change, rows in trend.hosts.items():
        for endpoint, country, sa, sb in rows:
            writer.writerow(["host", _cell(endpoint), f"{change}:{_cell(country)}", sa, sb, "", "",
                             "", ""])  # fmt: skip
            count += 1
    for g in trend.growth:
        writer.writerow(["growth", _cell(g.key), "", g.studies_a, g.studies_b, g.instances_a,
                         g.instances_b, g.exposed_a, g.exposed_b])  # fmt: skip
        count += 1
    return count


def _growth_row(g: Growth) -> list[str]:
    return [
        g.key,
        f"{g.exposed_a} -> {g.exposed_b}",
        f"{g.studies_a} -> {g.studies_b} ({Growth.pct(g.studies_a, g.studies_b)})",
        f"{g.instances_a} -> {g.instances_b} ({Growth.pct(g.instances_a, g.instances_b)})",
    ]


_GROWTH_HEAD: Final = ("country", "hosts exposing data", "study records", "instances (images)")


def render_trend_markdown(trend: Trend, *, title: str) -> str:
    t = trend.total
    lines = [
        f"# {_md(title)}",
        "",
        f"Run {_md(trend.run_a)} -> run {_md(trend.run_b)}: study records "
        f"{t.studies_a} -> {t.studies_b} ({Growth.pct(t.studies_a, t.studies_b)}), instances "
        f"{t.instances_a} -> {t.instances_b} ({Growth.pct(t.instances_a, t.instances_b)}).",
        "",
        "| change | endpoints |",
        "|---|---|",
        *[f"| {c.replace('_', ' ')} | {len(trend.hosts[c])} |" for c in CHANGES],
        "",
        "## Growth",
        "",
        "| " + " | ".join(_GROWTH_HEAD) + " |",
        "|---|---|---|---|",
        *["| " + " | ".join(_md(c) for c in _growth_row(g)) + " |" for g in trend.growth],
        "",
    ]
    for change in CHANGES:
        rows = trend.hosts[change]
        if not rows:
            continue
        heading = f"## {change.replace('_', ' ').capitalize()} ({len(rows)})"
        lines += [
            heading,
            "",
            "| endpoint | country | studies A | studies B |",
            "|---|---|---|---|",
        ]
        lines += [f"| {_md(e)} | {_md(c)} | {sa} | {sb} |" for e, c, sa, sb in rows]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_trend_html(trend: Trend, *, title: str) -> str:
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    t = trend.total
    legend = (f"run {trend.run_a}", f"run {trend.run_b}")
    countries = [g for g in trend.growth if g.key != TOTAL][:15]
    studies = paired_bar_chart(
        "Study records exposed",
        [(g.key, g.studies_a, g.studies_b) for g in [*countries, t]],
        chart_id="chart-studies-growth",
        legend=legend,
    )
    changes = bar_chart(
        "Endpoints",
        [(c.replace("_", " "), len(trend.hosts[c]), _CHANGE_COLOURS[c]) for c in CHANGES],
        chart_id="chart-changes",
    )
    growth_rows = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _growth_row(g)) + "</tr>"
        for g in trend.growth
    )
    sections = "".join(
        f'<h2 id="{change}">{escape(change.replace("_", " ").capitalize())} ({len(rows)})</h2>'
        "<table><tr><th>endpoint</th><th>country</th><th>studies A</th><th>studies B</th></tr>"
        + "".join(
            f"<tr><td>{escape(e)}</td><td>{escape(c)}</td><td>{sa}</td><td>{sb}</td></tr>"
            for e, c, sa, sb in rows
        )
        + "</table>"
        for change, rows in trend.hosts.items()
        if rows
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{escape(title)}</h1>
<p class="meta">Generated {escape(generated)} by pacsguard from history runs
{escape(trend.run_a)} and {escape(trend.run_b)}. Counts only: no patient value was kept.</p>
<p id="headline">Study records {t.studies_a} -&gt; {t.studies_b}
({escape(Growth.pct(t.studies_a, t.studies_b))}); instances {t.instances_a} -&gt;
{t.instances_b} ({escape(Growth.pct(t.instances_a, t.instances_b))}).</p>
<div class="charts">{studies}{changes}</div>
<h2 id="growth">Growth</h2>
<table><tr>{"".join(f"<th>{escape(h)}</th>" for h in _GROWTH_HEAD)}</tr>{growth_rows}</table>
{sections}
</body></html>
"""
