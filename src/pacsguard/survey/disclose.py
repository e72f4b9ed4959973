"""Disclosure kit: per organisation, a letter (Markdown and PDF) and a CSV for national CERTs.

Who owns an endpoint: the longest matching prefix of a user-supplied contact table (CSV with
columns `cidr`, `organisation`, optional `email`), else the AS organisation of the record's
`location` (MaxMind enrichment), else "unknown organisation". Letters cover exposed or
vulnerable endpoints (any finding above `info`), never honeypot-flagged hosts; they quote
finding titles, severities, CVSS, remediation and identifier *categories* from the scan records,
which hold no patient value, and never the finding evidence.

PDF: the letter's HTML printed by Debian's headless Chromium (`--print-to-pdf`). The HTML
renderer and escaping are the reports' own, Chromium is already what the report tests run, and a
PDF library (reportlab) would be a second layout engine and a new dependency for one page of text.
Without Chromium the Markdown and CSV are still written and the error says how to get PDFs.

CERT CSV: one row per endpoint and finding, in the columns CERT-Bund's and CISA's
vulnerability-notification feeds (and Shadowserver's reports) share: `timestamp`, `ip`, `port`,
`protocol`, `asn`, `as_org`, `country`, `organisation`, `finding_id`, `severity`, `cvss_score`,
`cvss_vector`, `description`, `remediation`. Timestamps are ISO 8601 UTC.
"""

from __future__ import annotations

import csv
import ipaddress
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any, Final, TextIO

from pacsguard.errors import UsageError
from pacsguard.report.digest import HostRow, row_from_record
from pacsguard.report.html import _STYLE
from pacsguard.report.markdown import _md
from pacsguard.report.tabular import _cell

UNKNOWN_ORG: Final = "unknown organisation"
CERT_COLUMNS: Final = (
    "timestamp", "ip", "port", "protocol", "asn", "as_org", "country", "organisation",
    "finding_id", "severity", "cvss_score", "cvss_vector", "description", "remediation",
)  # fmt: skip
#: How the organisation can check a fix itself, by finding id prefix (first match wins).
VERIFY: Final = (
    ("PG-DIMSE-ANON-FIND", "A C-FIND from an unknown calling AE (e.g. dcmtk `findscu -S -aet "
     "TEST -aec <your AE> -k QueryRetrieveLevel=STUDY <host> <port>`) must be rejected or "
     "return no match."),
    ("PG-DIMSE-PHI-EXPOSED", "The same C-FIND must not return any patient attribute."),
    ("PG-DIMSE-ANY-CALLED-AE", "`echoscu -aec ANY-SCP <host> <port>` must be rejected "
     "(called AE title not recognised)."),
    ("PG-DIMSE-ANON", "`echoscu -aet UNKNOWN <host> <port>` must be rejected (calling AE "
     "title not recognised) or require TLS client authentication."),
    ("PG-DIMSE-OPEN-STORE", "An association proposing a storage SOP class from an unknown AE "
     "must be rejected."),
    ("PG-DIMSE-NO-TLS", "The port must answer only a TLS handshake (`openssl s_client "
     "-connect <host>:<port>`), or be reachable from your own network only."),
    ("PG-TLS", "`openssl s_client -connect <host>:<port> -tls1_1` must fail, and the certificate "
     "shown must be current, CA-issued, RSA >= 2048 bits and SHA-256 signed."),
    ("PG-CVE", "The product's version string must name a fixed release."),
    ("PG-DIMSE", "The endpoint must not be reachable from the internet at all."),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Contact:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    organisation: str
    email: str


def read_contacts(path: Path) -> list[Contact]:
    """The contact table: `cidr,organisation[,email]`; a usage error names a bad line."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the contact table ({exc.strerror})") from None
    contacts = []
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"cidr", "organisation"} <= set(reader.fieldnames):
            raise UsageError(f"{path}: the contact table needs columns cidr,organisation[,email]")
        for number, row in enumerate(reader, start=2):
            try:
                network = ipaddress.ip_network((row["cidr"] or "").strip(), strict=False)
            except ValueError:
                raise UsageError(f"{path} line {number}: {row['cidr']!r} is not a CIDR") from None
            organisation = (row["organisation"] or "").strip()
            if not organisation:
                raise UsageError(f"{path} line {number}: empty organisation")
            contacts.append(Contact(network, organisation, (row.get("email") or "").strip()))
    return sorted(contacts, key=lambda c: -c.network.prefixlen)


def organisation_of(row: HostRow, contacts: list[Contact]) -> tuple[str, str]:
    """(organisation, contact e-mail or "") for one host."""
    try:
        address = ipaddress.ip_address(row.host)
    except ValueError:
        address = None
    if address is not None:
        for contact in contacts:  # longest prefix first
            if address.version == contact.network.version and address in contact.network:
                return contact.organisation, contact.email
    if row.as_org:
        return row.as_org, ""
    return UNKNOWN_ORG, ""


def to_notify(row: HostRow) -> bool:
    """Worth a letter: a real finding (above info) on a host not flagged as a honeypot."""
    return not row.honeypot and any(f.severity != "info" for f in row.findings)


@dataclass
class Organisation:
    name: str
    email: str
    hosts: list[HostRow]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:60] or "organisation"


def group_by_organisation(
    records: Iterable[dict[str, Any]], contacts: list[Contact]
) -> list[Organisation]:
    groups: dict[str, Organisation] = {}
    for record in records:
        row = row_from_record(record)
        if not to_notify(row):
            continue
        name, email = organisation_of(row, contacts)
        group = groups.setdefault(name, Organisation(name, email, []))
        group.hosts.append(row)
    return sorted(groups.values(), key=lambda o: o.name)


def _verify(finding_id: str) -> str:
    for prefix, text in VERIFY:
        if finding_id.startswith(prefix):
            return text
    return "Repeat the scan: the finding must be gone."


def _worst(org: Organisation) -> str:
    order = ("critical", "high", "medium", "low", "info")
    return min((h.worst or "info" for h in org.hosts), key=order.index)


def letter_markdown(org: Organisation, *, run_id: int, scanned: str, sender: str) -> str:
    lines = [
        f"# Exposed medical imaging systems at {_md(org.name)}",
        "",
        f"To: {_md(org.name)}{' <' + _md(org.email) + '>' if org.email else ''}  ",
        f"From: {_md(sender)}  ",
        f"Scan: run {run_id}, {_md(scanned)}; highest severity: **{_worst(org)}**",
        "",
        f"A scan found {len(org.hosts)} DICOM endpoint(s) in your network that answer an "
        "unauthenticated stranger from the internet. We kept no patient data: the scan records "
        "counts and the *kinds* of identifiers seen, never their values.",
        "",
        "## Endpoints",
        "",
        "| endpoint | transport | severity | studies exposed | instances exposed | "
        "identifier kinds |",
        "|---|---|---|---|---|---|",
        *[
            f"| {_md(h.endpoint)} | {_md(h.transport)}{' (TLS)' if h.tls else ''} | "
            f"{h.worst or 'none'} | {'at least ' if h.lower_bound else ''}{h.studies} | "
            f"{h.instances} | {_md(', '.join(h.phi_categories) or 'none')} |"
            for h in org.hosts
        ],
        "",
        "## Findings, remediation and how to verify the fix",
        "",
    ]
    for host in org.hosts:
        lines += [f"### {_md(host.endpoint)}", ""]
        for f in host.findings:
            if f.severity == "info":
                continue
            lines += [
                f"- **{_md(f.id)}** ({f.severity}, CVSS {f.score}): {_md(f.title)}",
                f"  - Remediation: {_md(f.remediation)}",
                f"  - Verify: {_md(_verify(f.id))}",
            ]
        lines.append("")
    lines += [
        "## Re-check",
        "",
        f"Once fixed, we can re-verify only your endpoints: `pacsguard scan --recheck {run_id} "
        f'--org "{_md(org.name)}"`. Please reply to tell us when to do so.',
        "",
    ]
    return "\n".join(lines)


def letter_html(markdown: str, *, title: str) -> str:
    """The letter as a printable page: Markdown's structure, every value escaped."""
    body: list[str] = []
    table: list[list[str]] = []

    def inline(text: str) -> str:
        out = escape(text.replace("\\|", "|").replace("&lt;", "<"))
        out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
        out = re.sub(r"\*(.+?)\*", r"<i>\1</i>", out)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", out)

    def close_table() -> None:
        if table:
            head, *rows = table
            body.append(
                "<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )  # fmt: skip
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-"} for c in cells):
                table.append([inline(c) for c in cells])
            continue
        close_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("  - "):
            body.append(f'<p class="sub">{inline(line[4:])}</p>')
        elif line.startswith("- "):
            body.append(f"<p>&bull; {inline(line[2:])}</p>")
        elif line.strip():
            body.append(f"<p>{inline(line.rstrip())}</p>")
    close_table()
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_STYLE}.sub{{margin:0 0 0 2em}}@page{{margin:18mm}}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def print_pdf(html_path: Path, pdf_path: Path) -> None:
    """Print an HTML file to PDF with Debian's headless Chromium."""
    binary = shutil.which("chromium")
    if binary is None:
        raise UsageError(
            "PDF letters need Debian's chromium (apt-get install chromium); "
            "or pass --no-pdf for Markdown and CSV only"
        )
    with tempfile.TemporaryDirectory(prefix="pacsguard-chromium-") as profile:
        done = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                f"--print-to-pdf={pdf_path}",
                html_path.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    if done.returncode != 0 or not pdf_path.exists():
        raise UsageError(f"chromium could not print {pdf_path}: {done.stderr.strip()[-400:]}")


def write_cert_csv(orgs: Iterable[Organisation], stream: TextIO) -> int:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CERT_COLUMNS)
    count = 0
    for org in orgs:
        for h in org.hosts:
            for f in h.findings:
                if f.severity == "info":
                    continue
                values = (
                    h.scanned_at, h.host, h.port, h.transport, "" if h.asn is None else h.asn,
                    h.as_org or "", h.country, org.name, f.id, f.severity, f.score, f.vector,
                    f.title, f.remediation,
                )  # fmt: skip
                writer.writerow([_cell(str(v)) for v in values])
                count += 1
    return count


@dataclass(frozen=True, slots=True)
class KitResult:
    organisations: int
    letters: int
    pdfs: int
    csv_rows: int


def write_kit(
    records: Iterable[dict[str, Any]],
    out: Path,
    *,
    run_id: int,
    scanned: str,
    contacts: list[Contact],
    pdf: bool = True,
    sender: str = "pacsguard survey",
) -> KitResult:
    """Write `out/<organisation>/letter.md|.html|.pdf|findings.csv`, `out/cert-report.csv` and
    `out/organisations.csv` (one line per letter: who, contact, endpoints, severity, folder)."""
    orgs = group_by_organisation(records, contacts)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the kit folder ({exc.strerror})") from None
    used: set[str] = set()
    pdfs = 0
    index: list[tuple[str, ...]] = []
    for org in orgs:
        slug, n = org.slug, 1
        while slug in used:
            n += 1
            slug = f"{org.slug}-{n}"
        used.add(slug)
        folder = out / slug
        folder.mkdir(exist_ok=True)
        text = letter_markdown(org, run_id=run_id, scanned=scanned, sender=sender)
        (folder / "letter.md").write_text(text, encoding="utf-8")
        html_path = folder / "letter.html"
        html_path.write_text(letter_html(text, title=f"Letter to {org.name}"), encoding="utf-8")
        with (folder / "findings.csv").open("w", encoding="utf-8", newline="") as stream:
            write_cert_csv([org], stream)
        if pdf:
            print_pdf(html_path, folder / "letter.pdf")
            pdfs += 1
        index.append((org.name, org.email, str(len(org.hosts)), _worst(org), slug))
    with (out / "organisations.csv").open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(("organisation", "email", "endpoints", "worst_severity", "folder"))
        writer.writerows([_cell(v) for v in row] for row in index)
    with (out / "cert-report.csv").open("w", encoding="utf-8", newline="") as stream:
        rows = write_cert_csv(orgs, stream)
    return KitResult(len(orgs), len(orgs), pdfs, rows)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
