"""A self-contained HTML report: executive summary with charts, then every host in detail.

One file, no external assets (styles inline, charts as inline SVG), so it can be mailed to a
hospital or attached to a CERT ticket and opened offline. Everything printed comes from scan
records, which hold counts, categories and redacted evidence only; every value is escaped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from typing import Final

from pacsguard.report.charts import SEVERITY_COLOURS, bar_chart
from pacsguard.report.digest import SEVERITIES, Digest, HostRow

_STYLE: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#212121;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #e0e0e0;padding-bottom:.2em}
.meta{color:#616161}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}
.card{border:1px solid #e0e0e0;border-radius:8px;padding:10px 14px;min-width:150px}
.card .n{font-size:1.7em;font-weight:600}.card .l{color:#616161;font-size:.9em}
.charts{display:flex;flex-wrap:wrap;gap:24px}
.chart-title{font-weight:600;font-size:14px}.chart-label,.chart-value{font-size:12px}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em}
th,td{border:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top;font-size:.92em}
th{background:#fafafa}.sev{color:#fff;border-radius:4px;padding:1px 6px;font-size:.85em}
details{border:1px solid #e0e0e0;border-radius:6px;margin:6px 0;padding:4px 10px}
summary{cursor:pointer}.honeypot{background:#fff8e1}
pre{background:#f5f5f5;padding:6px;overflow-x:auto;font-size:.85em}
"""


def _sev(severity: str | None) -> str:
    if severity is None:
        return "none"
    colour = SEVERITY_COLOURS.get(severity, "#757575")
    return f'<span class="sev" style="background:{colour}">{escape(severity)}</span>'


def _card(value: object, label: str) -> str:
    return (
        f'<div class="card"><div class="n">{escape(str(value))}</div>'
        f'<div class="l">{escape(label)}</div></div>'
    )


def _host_detail(host: HostRow) -> str:
    exposure = (
        f"{'at least ' if host.lower_bound else ''}{host.patients} patients, {host.studies} "
        f"studies, {host.series} series, {host.instances} instances"
        if host.exposed
        else "no data exposed"
    )
    rows = "".join(
        f"<tr><td>{_sev(f.severity)} {f.score}</td><td><b>{escape(f.id)}</b><br>"
        f"{escape(f.title)}</td><td>{escape(f.remediation)}"
        + (
            "<br>"
            + " ".join(
                f'<a href="{escape(r)}">{escape(r)}</a>' if r.startswith("https://") else escape(r)
                for r in f.references
            )
            if f.references
            else ""
        )
        + f"</td><td><pre>{escape(json.dumps(f.evidence, indent=1, sort_keys=True))}</pre>"
        f"<small>{escape(f.vector)}</small></td></tr>"
        for f in host.findings
    )
    flag = (
        f"<p><b>Flagged as a likely honeypot</b> ({escape('; '.join(host.honeypot_reasons))}): "
        "kept out of the exposure totals.</p>"
        if host.honeypot
        else ""
    )
    table = (
        "<table><tr><th>severity</th><th>finding</th><th>remediation</th><th>evidence</th></tr>"
        f"{rows}</table>"
        if rows
        else "<p>No findings.</p>"
    )
    return (
        f'<details class="host{" honeypot" if host.honeypot else ""}" id="{escape(host.endpoint)}">'
        f"<summary>{_sev(host.worst)} <b>{escape(host.endpoint)}</b> {escape(host.transport)}"
        f"{' (TLS)' if host.tls else ''}, association {escape(host.status)}"
        f"{', ' + escape(host.product) if host.product else ''}: {escape(exposure)}</summary>"
        f"{flag}"
        f"{'<p>Web: ' + escape(host.web) + '</p>' if host.web else ''}"
        f"<p>Identifier categories seen: {escape(', '.join(host.phi_categories) or 'none')}"
        f"{'. Probe cut short: ' + escape(host.error) if host.error else ''}</p>{table}</details>"
    )


def clusters_section(digest: Digest) -> str:
    if not digest.clusters:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(c.signature)}</code></td><td>{c.hosts}</td>"
        f"<td>{c.studies // c.hosts}</td><td>{c.instances // c.hosts}</td><td>"
        + escape(
            ", ".join(h.endpoint for h in digest.hosts if h.config_signature == c.signature)[:400]
        )
        + "</td></tr>"
        for c in digest.clusters
    )
    return (
        '<h2 id="clusters">Identical-configuration clusters</h2><p>Hosts that answer '
        "identically, down to the same counts, are fleets of one image or decoys; their "
        "exposure is left out of the totals above.</p><table><tr><th>signature</th><th>hosts"
        f"</th><th>studies each</th><th>instances each</th><th>hosts</th></tr>{rows}</table>"
    )


def render_html(digest: Digest, *, title: str = "pacsguard scan report", source: str = "") -> str:
    """The whole report as one HTML document."""
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    severity_bars = [(s, digest.severities[s], SEVERITY_COLOURS[s]) for s in SEVERITIES]
    finding_bars = [
        (f"{fid}", hosts, SEVERITY_COLOURS.get(severity, "#757575"))
        for fid, _title, severity, hosts in digest.top_findings()
    ]
    top_rows = "".join(
        f"<tr><td>{_sev(sev)}</td><td>{escape(fid)}</td><td>{escape(title_)}</td><td>{hosts}</td></tr>"
        for fid, title_, sev, hosts in digest.top_findings()
    )
    exposed_hosts = [h for h in digest.hosts_by_severity() if h.findings or h.honeypot]
    qualifier = "at least " if digest.lower_bound else ""
    cards = "".join(
        (
            _card(digest.targets, "targets scanned"),
            _card(digest.dicom, "speak DICOM"),
            _card(digest.accepting, "accept a stranger"),
            _card(digest.exposed, "expose patient data"),
            _card(f"{qualifier}{digest.studies}", "studies exposed"),
            _card(f"{qualifier}{digest.instances}", "instances exposed"),
            _card(digest.honeypots, "likely honeypots (not counted)"),
            _card(sum(c.hosts for c in digest.clusters), "in identical clusters (not counted)"),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">Generated {escape(generated)}{" from " + escape(source) if source else ""} by
pacsguard. Counts, categories and redacted evidence only: no patient value was kept.</p>
<h2 id="summary">Executive summary</h2>
<div class="cards">{cards}</div>
<p>{digest.exposed} of {digest.dicom} DICOM services give patient data to an unauthenticated
stranger: {qualifier}{digest.patients} patients, {digest.studies} studies and
{digest.instances} instances. {digest.with_tls} of the {digest.dicom} DICOM services use TLS.</p>
<div class="charts">
{bar_chart("Hosts by worst finding", severity_bars, chart_id="chart-severity", unit=" hosts")}
{bar_chart("Top findings (hosts)", finding_bars, chart_id="chart-findings", unit=" hosts")}
</div>
{clusters_section(digest)}
<h2 id="top-findings">Top findings</h2>
<table><tr><th>severity</th><th>id</th><th>finding</th><th>hosts</th></tr>{top_rows}</table>
<h2 id="hosts">Hosts ({len(exposed_hosts)} with findings)</h2>
{"".join(_host_detail(h) for h in exposed_hosts) or "<p>No host has a finding.</p>"}
</body></html>
"""
