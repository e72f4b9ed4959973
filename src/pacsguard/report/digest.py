"""A digest of scan records for people: totals, severity counts, top findings, host rows.

Reads JSON Lines records (the canonical scan output) one at a time and keeps only what the
reports print: counts, finding ids and each host's redacted evidence. Hosts flagged as
honeypots (record member ``honeypot.flagged``) are listed with their reason but kept out of the
exposure totals and the severity distribution, and hosts in identical-configuration clusters
(same ``config_signature`` on several hosts) out of the exposure totals, as surveys do.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pacsguard.errors import UsageError
from pacsguard.scan.honeypots import Cluster, ClusterTally

SEVERITIES: Final = ("critical", "high", "medium", "low", "info")
_RANK: Final = {s: n for n, s in enumerate(reversed(SEVERITIES))}


@dataclass(frozen=True, slots=True)
class FindingRow:
    id: str
    title: str
    severity: str
    score: float
    vector: str
    evidence: dict[str, Any]
    remediation: str
    references: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostRow:
    """One record, reduced to what a report shows."""

    endpoint: str
    host: str
    port: int
    transport: str
    tls: bool
    reachable: bool
    dicom: bool
    status: str
    product: str | None
    worst: str | None
    patients: int
    studies: int
    series: int
    instances: int
    lower_bound: bool
    phi_categories: tuple[str, ...]
    findings: tuple[FindingRow, ...]
    honeypot_reasons: tuple[str, ...]
    config_signature: str | None
    error: str | None
    scanned_at: str
    #: What a web target showed (record member ``http``), in words; None for DIMSE targets.
    web: str | None = None
    #: From the record's optional `location` (MaxMind enrichment): "unknown" without it.
    country: str = "unknown"
    asn: int | None = None
    as_org: str | None = None
    #: The DICOM service refused a stranger's calling or called AE title (an allow-list or a
    #: called-AE check): the "checks AE titles" column of published surveys.
    ae_checked: bool = False
    #: A storage context was accepted from a stranger (C-STORE would be possible).
    open_store: bool = False

    @property
    def honeypot(self) -> bool:
        return bool(self.honeypot_reasons)

    @property
    def exposed(self) -> bool:
        return self.studies > 0 or self.patients > 0

    @property
    def ssn_shaped(self) -> bool:
        return "patient_id_ssn_shaped" in self.phi_categories


@dataclass
class Digest:
    """Totals over every record; honeypot-flagged hosts are counted apart."""

    targets: int = 0
    reachable: int = 0
    dicom: int = 0
    accepting: int = 0
    exposed: int = 0
    patients: int = 0
    studies: int = 0
    instances: int = 0
    lower_bound: bool = False
    with_tls: int = 0
    #: DICOM services that check AE titles / accept C-STORE from a stranger (honeypots apart).
    ae_checked: int = 0
    open_store: int = 0
    #: Exposing hosts whose patient IDs look like SSNs (clusters left out, as for `exposed`).
    ssn_shaped: int = 0
    honeypots: int = 0
    severities: Counter[str] = field(default_factory=Counter)
    #: finding id -> (title of its first occurrence, severity, hosts)
    finding_hosts: Counter[str] = field(default_factory=Counter)
    finding_titles: dict[str, tuple[str, str]] = field(default_factory=dict)
    hosts: list[HostRow] = field(default_factory=list)
    tally: ClusterTally = field(default_factory=ClusterTally)
    #: Filled by `finish`: identical-configuration clusters, left out of the exposure totals.
    clusters: list[Cluster] = field(default_factory=list)
    #: A survey of a million addresses keeps rows of reachable hosts only (nothing it prints
    #: or compares needs the others); the per-host reports keep every row.
    keep_unreachable: bool = True
    _ssn_by_signature: Counter[str] = field(default_factory=Counter)
    _finished: bool = False

    def add(self, row: HostRow) -> None:
        self.targets += 1
        self.reachable += row.reachable
        self.dicom += row.dicom
        self.with_tls += row.tls and row.dicom
        if row.reachable or self.keep_unreachable:
            self.hosts.append(row)
        if row.honeypot:
            self.honeypots += 1
            return
        self.accepting += row.status == "accepted"
        self.ae_checked += row.dicom and row.ae_checked
        self.open_store += row.open_store
        if row.exposed:
            self.exposed += 1
            if row.ssn_shaped:
                self.ssn_shaped += 1
                if row.config_signature is not None:
                    self._ssn_by_signature[row.config_signature] += 1
            self.patients += row.patients
            self.studies += row.studies
            self.instances += row.instances
            self.lower_bound |= row.lower_bound
            self.tally.add(row.config_signature, row.patients, row.studies, row.instances)
        if row.worst is not None:
            self.severities[row.worst] += 1
        for finding in row.findings:
            self.finding_hosts[finding.id] += 1
            self.finding_titles.setdefault(finding.id, (_generic_title(finding), finding.severity))

    def finish(self, within: ClusterTally | None = None) -> None:
        """Take identical-configuration clusters out of the exposure totals (once).

        `within` decides what a cluster is when this digest is one part of a larger one (a
        country of a survey): a fleet spread over several countries is a cluster in each.
        Give such a part a `ClusterTally(min_hosts=1)` so it keeps every signature's sums."""
        if self._finished:
            return
        self._finished = True
        reference = within or self.tally
        self.clusters = [c for c in self.tally.clusters() if reference.in_cluster(c.signature)]
        for cluster in self.clusters:
            self.exposed -= cluster.hosts
            self.patients -= cluster.patients
            self.studies -= cluster.studies
            self.instances -= cluster.instances
            self.ssn_shaped -= self._ssn_by_signature[cluster.signature]

    def clustered(self, row: HostRow) -> bool:
        return not row.honeypot and any(c.signature == row.config_signature for c in self.clusters)

    def top_findings(self, n: int = 10) -> list[tuple[str, str, str, int]]:
        """(id, title, severity, hosts), most severe then most frequent first."""
        ranked = sorted(
            self.finding_hosts.items(),
            key=lambda item: (-_RANK[self.finding_titles[item[0]][1]], -item[1], item[0]),
        )
        return [(fid, *self.finding_titles[fid], hosts) for fid, hosts in ranked[:n]]

    def hosts_by_severity(self) -> list[HostRow]:
        return sorted(
            self.hosts,
            key=lambda h: (h.honeypot, -_RANK.get(h.worst or "", -1), -h.studies, h.host, h.port),
        )


def _generic_title(finding: FindingRow) -> str:
    """A title without host-specific counts, for the summary ("exposes 3 studies" varies)."""
    if finding.id == "PG-DIMSE-ANON-FIND":
        return "Anonymous C-FIND exposes studies and instances"
    return finding.title


def web_summary(http: dict[str, Any] | None) -> str | None:
    """One line on what a web target showed: Orthanc's API, the login asked, open QIDO-RS
    roots, viewers, a default login that worked."""
    if not http:
        return None
    if not http.get("answered"):
        return "no HTTP answer"
    parts: list[str] = []
    orthanc = http.get("orthanc")
    if orthanc:
        version = f" {orthanc['version']}" if orthanc.get("version") else ""
        parts.append(
            f"Orthanc{version} REST API open"
            if orthanc.get("open")
            else "Orthanc REST API behind a login"
        )
    auth = http.get("auth") or {}
    if auth.get("scheme"):
        realm = f' (realm "{auth["realm"]}")' if auth.get("realm") else ""
        parts.append(f"login asked: {auth['scheme']}{realm}")
    for qido in http.get("dicomweb") or ():
        if qido.get("open"):
            more = "at least " if qido.get("lower_bound") else ""
            parts.append(f"QIDO-RS open at {qido['path']} ({more}{qido['studies']} studies)")
        elif qido.get("auth_required"):
            parts.append(f"DICOMweb at {qido['path']} asks for credentials ({qido.get('product')})")
    viewers = [str(v["name"]) for v in http.get("viewers") or ()]
    if viewers:
        parts.append("viewers: " + ", ".join(viewers))
    working = (http.get("default_credentials") or {}).get("working") or ()
    if working:
        parts.append("default login works: " + ", ".join(str(c["id"]) for c in working))
    return "; ".join(parts) or "HTTP, nothing PACS-specific seen"


def row_from_record(record: dict[str, Any]) -> HostRow:
    """A HostRow from one scan record; KeyError/TypeError/ValueError on a malformed one."""
    association = record["association"]
    exposure = record.get("exposure") or {}
    product = record.get("product")
    honeypot = record.get("honeypot") or {}
    reasons = tuple(str(r) for r in honeypot.get("reasons", ())) if honeypot.get("flagged") else ()
    if honeypot.get("flagged") and not reasons:
        reasons = ("flagged",)
    host, port = str(record["host"]), int(record["port"])
    location = record.get("location") or {}
    asn = location.get("asn")
    dicom = bool(record["dicom"])
    return HostRow(
        endpoint=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        host=host,
        port=port,
        transport=str(record["transport"]),
        tls=bool(record["tls"]),
        reachable=bool(record["reachable"]),
        dicom=dicom,
        status=str(association["status"]),
        product=(
            None
            if not product
            else f"{product['name']} {product['version']}"
            if product.get("version")
            else str(product["name"])
        ),
        worst=record.get("worst_severity"),
        patients=int(exposure.get("patients", 0)),
        studies=int(exposure.get("studies", 0)),
        series=int(exposure.get("series", 0)),
        instances=int(exposure.get("instances", 0)),
        lower_bound=bool(exposure.get("lower_bound", False)),
        phi_categories=tuple(exposure.get("phi_categories", ())),
        findings=tuple(
            FindingRow(
                id=str(f["id"]),
                title=str(f["title"]),
                severity=str(f["severity"]),
                score=float(f["cvss"]["score"]),
                vector=str(f["cvss"]["vector"]),
                evidence=dict(f["evidence"]),
                remediation=str(f["remediation"]),
                references=tuple(f.get("references", ())),
            )
            for f in record["findings"]
        ),
        honeypot_reasons=reasons,
        config_signature=record.get("config_signature"),
        error=record.get("error"),
        scanned_at=str(record.get("scanned_at", "")),
        web=web_summary(record.get("http")),
        country=str(location.get("country") or "unknown"),
        asn=int(asn) if isinstance(asn, int) else None,
        as_org=str(location["as_org"]) if location.get("as_org") else None,
        ae_checked=dicom
        and (
            association.get("calling_ae_checked") is True
            or association.get("any_called_ae_accepted") is False
        ),
        open_store=association["status"] == "accepted"
        and "storage" in association.get("accepted_services", ()),
    )


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON Lines scan file, streamed; UsageError naming the line if one is bad."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the scan file ({exc.strerror})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise UsageError(
                    f"{path} line {number}: not JSON (is this a scan .jsonl?)"
                ) from None
            if not isinstance(record, dict) or not str(record.get("schema", "")).startswith(
                "pacsguard.scan-record/"
            ):
                raise UsageError(f"{path} line {number}: not a pacsguard scan record")
            yield record


def digest(records: Iterable[dict[str, Any]], source: str = "records") -> Digest:
    result = Digest()
    for number, record in enumerate(records, start=1):
        try:
            row = row_from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{source} record {number}: malformed ({exc!r})") from None
        result.add(row)
    result.finish()
    return result
