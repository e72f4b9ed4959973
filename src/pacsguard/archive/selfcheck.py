"""The archive scans itself: Find's probes against Fix's own endpoints, as a stranger would.

DIMSE: the probe presents the scanner's unknown calling AE and no credentials. Over TLS it does
not verify the server certificate (a stranger has no reason to trust our CA) and offers no
client certificate. DICOMweb (when enabled): the scanner's HTTP tier (`scan.http_probe`) asks
the HTTPS listener what it asks any web target, without a token: the TLS observation
(versions, certificate, client certificate), `/`, and QIDO-RS at the DICOMweb roots it knows,
pacsguard's own among them (recognised by its `Bearer realm="pacsguard"` challenge).

A secure archive yields no finding at high or above; the lab profile yields the open ones. In
the secure profile an anonymous QIDO-RS search that is answered is not a finding to print but
a reason not to run (`refusal`): `serve` stops with it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

from pacsguard.archive.app import RunningArchive
from pacsguard.archive.runtime import Endpoint
from pacsguard.dicom.client import Timeouts
from pacsguard.scan.checks import assess
from pacsguard.scan.http_probe import HttpOptions, probe_http
from pacsguard.scan.model import ClientCertificate, HostReport, Severity, Target, TlsFacts
from pacsguard.scan.probe import ProbeOptions, probe_dimse

#: The HTTP tier's bounds for our own listener: quick, and one QIDO page is all it needs.
WEB_OPTIONS = HttpOptions(
    connect_timeout=3.0,
    read_timeout=5.0,
    request_timeout=10.0,
    total_timeout=30.0,
    qido_max_pages=1,
)


def stranger_tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def web_targets(running: RunningArchive) -> list[Target]:
    """The archive's HTTPS (DICOMweb) listeners, as the scanner's targets."""
    return [Target(e.host, e.port, "https") for e in running.endpoints if e.protocol == "https"]


async def _scan(endpoints: Sequence[Endpoint], web: Sequence[Target]) -> list[HostReport]:
    reports = []
    for endpoint in endpoints:
        if endpoint.protocol != "dicom":
            continue  # other transports' self-checks are their own
        options = ProbeOptions(
            timeouts=Timeouts(connect=3.0, read=5.0),
            total_timeout=30.0,
            tls=stranger_tls_context() if endpoint.tls else None,
        )
        observations = await probe_dimse(Target(endpoint.host, endpoint.port), options)
        reports.append(assess(observations))
    for target in web:
        reports.append(assess(await probe_http(target, WEB_OPTIONS)))
    return reports


def self_check(running: RunningArchive) -> list[HostReport]:
    """Scan every endpoint once (DIMSE ones, then DICOMweb's); never raises for what the
    endpoints answer.

    The probe's AE-title guesses count as failed logins from our own address; the gate
    forgives them afterwards so the self-check never locks local operators out. (HTTP
    requests without a token are refused without counting.)
    """
    try:
        return asyncio.run(_scan(running.endpoints, web_targets(running)))
    finally:
        for address in {"127.0.0.1", "::1", *(e.host for e in running.endpoints)}:
            running.gate.forgive(address)


def worst(reports: Sequence[HostReport]) -> Severity | None:
    found = [r.worst for r in reports if r.worst is not None]
    return max(found, key=lambda s: s.rank) if found else None


def web_reports(reports: Sequence[HostReport]) -> list[HostReport]:
    """The reports of the HTTPS side."""
    return [r for r in reports if r.observations.http is not None]


def refusal(reports: Sequence[HostReport], profile: str) -> str | None:
    """Why the archive must not keep running, or None: in the secure profile, a stranger's
    QIDO-RS search answered by our DICOMweb. (The lab profile is open on purpose, on
    loopback only; its findings are reported, as for DIMSE.)"""
    if profile == "lab":
        return None
    for report in web_reports(reports):
        http = report.observations.http
        assert http is not None
        answered = [q for q in http.dicomweb if q.open]
        if answered:
            studies = max(q.studies for q in answered)
            more = "at least " if any(q.lower_bound for q in answered) else ""
            return (
                f"self-check: DICOMweb https://{report.observations.target} answered a QIDO-RS "
                f"search without a token ({more}{studies} studies visible): the archive stops "
                'rather than serve strangers. An [[ae]] with auth = "address" matching this '
                "machine also lets tokenless HTTP requests from it in (security."
                "allow_address_auth); fix the config, or set [dicomweb] enabled = false"
            )
    return None


def describe_web(report: HostReport) -> str:
    """Two lines on the HTTPS side as the scanner saw it: what an anonymous QIDO-RS got, and
    the TLS facts. Counts and certificate facts only."""
    obs = report.observations
    http = obs.http
    where = f"https://{obs.target}"
    if http is None or not http.answered:
        return f"{where}: no HTTP answer ({obs.error or 'nothing answered'})"
    answered = [q for q in http.dicomweb if q.open]
    closed = [q for q in http.dicomweb if q.auth_required]
    if answered:
        best = max(answered, key=lambda q: q.studies)
        more = "at least " if best.lower_bound else ""
        qido = f"anonymous QIDO-RS ANSWERED ({more}{best.studies} studies)"
    elif closed:
        realm = f' realm "{http.auth_realm}"' if http.auth_realm else ""
        qido = (
            f"anonymous QIDO-RS refused ({closed[0].status}, {http.auth_scheme or 'no'}{realm}: "
            f"{closed[0].product}, authentication required)"
        )
    else:
        statuses = sorted({str(q.status) for q in http.dicomweb})
        qido = f"QIDO-RS not recognised (answers {', '.join(statuses) or 'none'})"
    return f"{where}: {qido}\n  {describe_tls(obs.tls_facts)}"


def describe_tls(facts: TlsFacts | None) -> str:
    if facts is None:
        return "TLS not observed"
    parts = [
        "accepts TLS "
        + ", ".join(facts.versions_accepted)
        + (f" (refuses {', '.join(facts.versions_refused)})" if facts.versions_refused else "")
    ]
    if facts.negotiated_version:
        parts.append(f"negotiated {facts.negotiated_version} {facts.cipher or ''}".rstrip())
    parts.append(
        {
            ClientCertificate.NOT_REQUESTED: "no client certificate asked",
            ClientCertificate.REQUESTED: "client certificate asked, not required",
            ClientCertificate.REQUIRED: "client certificate required",
            ClientCertificate.UNKNOWN: "client certificate: unknown",
        }[facts.client_certificate]
    )
    cert = facts.certificate
    if cert is not None:
        parts.append(
            f"certificate {cert.subject} from {cert.issuer}, {cert.key_type.upper()} "
            f"{cert.key_bits} bits, valid to {cert.not_after[:10]}"
            + (", EXPIRED" if cert.expired else "")
            + (", self-signed" if cert.self_signed else "")
        )
    elif facts.certificate_error:
        parts.append(f"certificate unreadable: {facts.certificate_error}")
    return "; ".join(parts)
