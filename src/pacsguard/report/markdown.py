"""Markdown: the summary and the hosts with findings, for tickets, wikis and e-mail."""

from __future__ import annotations

from pacsguard.report.digest import SEVERITIES, Digest, HostRow


def _md(text: str) -> str:
    """Peer-influenced text inside a table cell: no pipes, no line breaks, no HTML."""
    return (
        text.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace("\n", " ")
        .replace("\r", " ")
    )


def _host(host: HostRow) -> list[str]:
    lines = [
        f"### {_md(host.endpoint)} ({_md(host.worst or 'no finding')})",
        "",
        f"- transport: {host.transport}{' (TLS)' if host.tls else ''}; association: "
        f"{_md(host.status)}; product: {_md(host.product or 'unknown')}",
        f"- exposed: {'at least ' if host.lower_bound else ''}{host.patients} patients, "
        f"{host.studies} studies, {host.instances} instances; identifier categories: "
        f"{_md(', '.join(host.phi_categories) or 'none')}",
    ]
    if host.web:
        lines.append(f"- web: {_md(host.web)}")
    if host.honeypot:
        lines.append(
            f"- **flagged as a likely honeypot** ({_md('; '.join(host.honeypot_reasons))}): "
            "not counted in the totals"
        )
    lines += ["", "| severity | finding | remediation |", "|---|---|---|"]
    lines += [
        f"| {f.severity} {f.score} | {_md(f.id)}: {_md(f.title)} | {_md(f.remediation)} |"
        for f in host.findings
    ]
    return [*lines, ""]


def clusters_lines(digest: Digest) -> list[str]:
    if not digest.clusters:
        return []
    return [
        "## Identical-configuration clusters",
        "",
        "| signature | hosts | studies each | instances each |",
        "|---|---|---|---|",
        *[
            f"| {c.signature} | {c.hosts} | {c.studies // c.hosts} | {c.instances // c.hosts} |"
            for c in digest.clusters
        ],
        "",
    ]


def render_markdown(digest: Digest, *, title: str = "pacsguard scan report") -> str:
    q = "at least " if digest.lower_bound else ""
    lines = [
        f"# {_md(title)}",
        "",
        "Counts, categories and redacted evidence only: no patient value was kept.",
        "",
        "## Summary",
        "",
        "| measure | value |",
        "|---|---|",
        f"| targets scanned | {digest.targets} |",
        f"| reachable | {digest.reachable} |",
        f"| speak DICOM | {digest.dicom} |",
        f"| accept a stranger | {digest.accepting} |",
        f"| expose patient data | {digest.exposed} |",
        f"| patients / studies / instances exposed | {q}{digest.patients} / "
        f"{digest.studies} / {digest.instances} |",
        f"| DICOM services with TLS | {digest.with_tls} |",
        f"| likely honeypots (not counted) | {digest.honeypots} |",
        f"| hosts in identical-configuration clusters (not counted) | "
        f"{sum(c.hosts for c in digest.clusters)} |",
        "",
        "## Hosts by worst finding",
        "",
        "| severity | hosts |",
        "|---|---|",
        *[f"| {s} | {digest.severities[s]} |" for s in SEVERITIES],
        "",
        *clusters_lines(digest),
        "## Top findings",
        "",
        "| severity | id | finding | hosts |",
        "|---|---|---|---|",
        *[
            f"| {sev} | {_md(fid)} | {_md(title_)} | {hosts} |"
            for fid, title_, sev, hosts in digest.top_findings()
        ],
        "",
        "## Hosts",
        "",
    ]
    for host in digest.hosts_by_severity():
        if host.findings or host.honeypot:
            lines += _host(host)
    return "\n".join(lines).rstrip() + "\n"
