"""JSON Lines: the canonical scan output, one record per target, streamed as targets finish.

The record layout is documented by `schema/scan-record.schema.json` (also in docs/), which the
tests validate every record against. Records carry no patient value by construction: they are
built from Observations and Findings only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson

from pacsguard.scan.http_model import HttpObservations
from pacsguard.scan.model import (
    CertificateFacts,
    ClientCertificate,
    Finding,
    HostReport,
    Observations,
    Outcome,
    TlsFacts,
)

SCHEMA_ID: Final = "pacsguard.scan-record/1"


def _association(obs: Observations) -> dict[str, Any]:
    facts = obs.tls_facts
    if obs.accepted_called_aets:
        status, reason = Outcome.ACCEPTED.value, None
    elif (
        facts is not None
        and facts.client_certificate is ClientCertificate.REQUIRED
        and not obs.dicom
    ):
        # Inside TLS no request was possible; the plaintext attempt's outcome would mislead.
        status, reason = "not-attempted", "tls-client-certificate-required"
    elif obs.attempts:
        last = obs.attempts[-1]
        status, reason = last.outcome.value, last.reason
    else:
        status, reason = "not-attempted", None
    return {
        "status": status,
        "reason": reason,
        "any_called_ae_accepted": obs.any_called_ae_accepted,
        "calling_ae_checked": obs.calling_ae_checked,
        "accepted_services": list(obs.accepted_services),
        "max_pdu": obs.max_pdu,
        "implementation_class_uid": obs.implementation_class_uid,
        "implementation_version_name": obs.implementation_version_name,
        "attempts": [
            {
                "calling_ae": a.calling_ae,
                "called_ae": a.called_ae,
                "outcome": a.outcome.value,
                "reason": a.reason,
                "tls": a.tls,
            }
            for a in obs.attempts
        ],
    }


def http_record(http: HttpObservations | None) -> dict[str, Any] | None:
    """The HTTP tier's facts: counts, versions, paths and realms; never an answer's body."""
    if http is None:
        return None
    orthanc = http.orthanc
    return {
        "scheme": http.scheme,
        "answered": http.answered,
        "root_status": http.root_status,
        "server": http.server,
        "auth": {"scheme": http.auth_scheme, "realm": http.auth_realm},
        "orthanc": None
        if orthanc is None
        else {
            "open": orthanc.open,
            "version": orthanc.version,
            "api_version": orthanc.api_version,
            "dicom_aet": orthanc.dicom_aet,
            "dicom_port": orthanc.dicom_port,
            "plugins_enabled": orthanc.plugins_enabled,
            "patients": orthanc.patients,
            "studies": orthanc.studies,
            "series": orthanc.series,
            "instances": orthanc.instances,
            "patients_listable": orthanc.patients_listable,
            "patients_listed": orthanc.patients_listed,
            "patients_listed_lower_bound": orthanc.patients_listed_lower_bound,
        },
        "dicomweb": [
            {
                "path": q.path,
                "status": q.status,
                "open": q.open,
                "studies": q.studies,
                "lower_bound": q.lower_bound,
                "pages": q.pages,
                "phi_categories": sorted(c.value for c in q.phi_categories),
                "note": q.note,
                "product": q.product,
                "auth_required": q.auth_required,
            }
            for q in http.dicomweb
        ],
        "viewers": [
            {"id": v.id, "name": v.name, "path": v.path, "source": v.source} for v in http.viewers
        ],
        "default_credentials": {
            "tried": http.default_credentials_tried,
            "working": [
                {"id": c.id, "username": c.username, "path": c.path}
                for c in http.default_credentials
            ],
        },
        "endpoints": [
            {"path": e.path, "status": e.status, "auth_scheme": e.auth_scheme}
            for e in http.endpoints
        ],
    }


def _certificate(cert: CertificateFacts) -> dict[str, Any]:
    return {
        "subject": cert.subject,
        "issuer": cert.issuer,
        "dns_names": list(cert.dns_names),
        "ip_addresses": list(cert.ip_addresses),
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "expired": cert.expired,
        "not_yet_valid": cert.not_yet_valid,
        "self_signed": cert.self_signed,
        "key_type": cert.key_type,
        "key_bits": cert.key_bits,
        "signature_algorithm": cert.signature_algorithm,
        "signature_hash": cert.signature_hash,
        "sha256_fingerprint": cert.sha256_fingerprint,
    }


def _tls_facts(facts: TlsFacts | None) -> dict[str, Any] | None:
    if facts is None:
        return None
    return {
        "versions_accepted": list(facts.versions_accepted),
        "versions_refused": list(facts.versions_refused),
        "versions_untested": list(facts.versions_untested),
        "negotiated_version": facts.negotiated_version,
        "cipher": facts.cipher,
        "client_certificate": facts.client_certificate.value,
        "certificate": _certificate(facts.certificate) if facts.certificate else None,
        "certificate_error": facts.certificate_error,
    }


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "id": f.id,
        "title": f.title,
        "severity": f.severity.value,
        "cvss": {"version": "3.1", "vector": f.cvss_vector, "score": f.cvss_score},
        "evidence": f.evidence,
        "remediation": f.remediation,
        "references": list(f.references),
    }


def to_record(report: HostReport, *, scanned_at: datetime | None = None) -> dict[str, Any]:
    """The JSON-ready record for one target."""
    obs = report.observations
    exposure = obs.exposure
    return {
        "schema": SCHEMA_ID,
        "host": obs.target.host,
        "port": obs.target.port,
        "transport": obs.target.transport,
        "tls": obs.tls,
        "tls_facts": _tls_facts(obs.tls_facts),
        "reachable": obs.reachable,
        "dicom": obs.dicom,
        "association": _association(obs),
        "accepted_called_aets": list(obs.accepted_called_aets),
        "echo": {
            "attempted": obs.echo_status is not None,
            "status": f"0x{obs.echo_status:04X}" if obs.echo_status is not None else None,
            "ok": obs.echo_status == 0,
        },
        "exposure": None
        if exposure is None
        else {
            "patients": exposure.patients,
            "studies": exposure.studies,
            "series": exposure.series,
            "instances": exposure.instances,
            "lower_bound": exposure.lower_bound,
            "lower_bound_reasons": [r.value for r in exposure.lower_bound_reasons],
            "responses": exposure.responses,
            "phi_categories": sorted(c.value for c in exposure.phi_categories),
            "method": exposure.method,
            "queries": exposure.queries,
            "notes": list(exposure.notes),
        },
        "product": None
        if report.product is None
        else {
            "id": report.product.id,
            "name": report.product.name,
            "version": report.product.version,
            "identified_by": report.product.basis,
        },
        "honeypot": {
            "flagged": report.honeypot_flagged,
            "signatures": list(report.honeypot_signatures),
            "reasons": list(report.honeypot_reasons),
        },
        "config_signature": report.config_signature,
        "location": None
        if report.location is None
        else {
            "country": report.location.country,
            "asn": report.location.asn,
            "as_org": report.location.as_org,
        },
        "http": http_record(obs.http),
        "findings": [_finding(f) for f in report.findings],
        "worst_severity": report.worst.value if report.worst else None,
        "anomalies": list(obs.anomalies),
        "error": obs.error,
        "duration_s": obs.duration_s,
        "scanned_at": (scanned_at or datetime.now(UTC)).isoformat(timespec="seconds"),
    }


def encode_record(record: dict[str, Any]) -> str:
    """`json.dumps(record, separators=(",", ":"), sort_keys=True)`, five times faster.

    orjson writes the same text for what records hold, except non-ASCII text and DEL (json
    escapes everything outside space to tilde; orjson leaves DEL, U+007F, raw),
    floats between 0 and 1e-4 (json writes 1e-05, orjson 0.00001) and integers past 64 bits:
    records with any of those go to json. `tests/unit/test_jsonl_encoding.py` holds the two to
    the same text on arbitrary JSON values.
    """
    if _plain(record):
        try:
            text: str = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:
            pass
        else:
            if text.isascii() and "\x7f" not in text:
                return text
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _plain(value: object) -> bool:
    """No float that orjson writes differently from json (0 < |x| < 1e-4, inf, nan)."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, float) and not (item == 0.0 or 1e-4 <= abs(item) < _INFINITY):
            return False
    return True


_INFINITY: Final = float("inf")


class TextSink(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


def write_record(stream: TextSink, report: HostReport, *, flush: bool = True) -> None:
    """Write one record and flush, so that a consumer sees each target as it finishes.

    `flush=False` leaves the flush to the caller (a scan flushes once per turn of its event
    loop: records finished together go out in one write)."""
    stream.write(encode_record(to_record(report)) + "\n")
    if flush:
        stream.flush()


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one record."""
    from importlib import resources  # only here: scanning never needs it

    text = resources.files("pacsguard.report").joinpath("schema/scan-record.schema.json")
    loaded: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return loaded
