"""Checks on the HTTP tier's observations: pure functions, like `checks`, cited and scored.

Evidence holds versions, counts, paths, realms and category names only; the HTTP prober never
keeps a patient value, so none can reach a finding.
"""

from __future__ import annotations

from typing import Final

from pacsguard.scan.checks import (
    GDPR_9,
    GDPR_32,
    HIPAA_ACCESS,
    HIPAA_AUTH,
    HIPAA_INTEGRITY,
    HIPAA_TRANSMISSION,
    Check,
    _finding,
)
from pacsguard.scan.model import Finding, Observations

PS3_18_QIDO: Final = "DICOM PS3.18 10.6 QIDO-RS (search transaction)"
PS3_15_HTTPS: Final = "DICOM PS3.15 B.9 / BCP 195 (TLS for DICOMweb, PS3.18 6.1 HTTPS)"
ORTHANC_SECURITY: Final = "https://orthanc.uclouvain.be/book/faq/security.html"
CVE_2025_0896: Final = "https://www.cisa.gov/news-events/ics-medical-advisories/icsma-25-037-02"
CWE_1392: Final = "CWE-1392 use of default credentials"
RFC_7617: Final = "RFC 7617 (Basic authentication sends the password in clear without TLS)"
RFC_6750: Final = "RFC 6750 3 (the WWW-Authenticate challenge of a bearer-token resource)"


def check_orthanc_open_api(obs: Observations) -> Finding | None:
    """Orthanc's REST API answers without authentication (the exposure behind CVE-2025-0896).

    The API that answered `/system` also takes uploads, modifications and deletions; those are
    inferred from Orthanc's documentation, never tried."""
    http = obs.http
    if http is None or http.orthanc is None or not http.orthanc.open:
        return None
    orthanc = http.orthanc
    return _finding(
        "PG-HTTP-ORTHANC-OPEN-API",
        "Orthanc REST API open without authentication"
        + (f" ({orthanc.studies} studies)" if orthanc.studies else ""),
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        {
            "version": orthanc.version,
            "patients": orthanc.patients,
            "studies": orthanc.studies,
            "series": orthanc.series,
            "instances": orthanc.instances,
            "patients_listable": orthanc.patients_listable,
            "patients_listed": orthanc.patients_listed,
            "write_access": "inferred (REST API accepts uploads and deletions), not tried",
        },
        'Set "AuthenticationEnabled": true with strong "RegisteredUsers" (or an '
        'authorization plugin), keep "RemoteAccessAllowed" false unless needed, and serve '
        "the API only over TLS behind an authenticating reverse proxy.",
        (ORTHANC_SECURITY, CVE_2025_0896, HIPAA_ACCESS, HIPAA_AUTH, HIPAA_INTEGRITY, GDPR_32),
    )


def check_qido_anonymous(obs: Observations) -> Finding | None:
    """QIDO-RS answers study searches to an anonymous client (PS3.18 10.6)."""
    http = obs.http
    if http is None:
        return None
    open_roots = [q for q in http.dicomweb if q.open]
    if not open_roots:
        return None
    best = max(open_roots, key=lambda q: q.studies)
    qualifier = "at least " if best.lower_bound else ""
    return _finding(
        "PG-HTTP-QIDO-ANON",
        f"Anonymous DICOMweb QIDO-RS exposes {qualifier}{best.studies} studies",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
        {
            "endpoints": [
                {"path": q.path, "studies": q.studies, "lower_bound": q.lower_bound}
                for q in open_roots
            ],
            "studies": best.studies,
            "lower_bound": best.lower_bound,
            "phi_categories": sorted({c.value for q in open_roots for c in q.phi_categories}),
        },
        "Require authentication (OAuth 2 / OpenID Connect bearer tokens, or at least basic "
        "authentication over TLS) on every DICOMweb endpoint; never expose QIDO-RS, WADO-RS "
        "or STOW-RS anonymously.",
        (PS3_18_QIDO, HIPAA_ACCESS, HIPAA_AUTH, GDPR_32, GDPR_9),
    )


def check_dicomweb_authentication_required(obs: Observations) -> Finding | None:
    """Informational: a DICOMweb service, recognised by its product's challenge, refuses an
    anonymous QIDO-RS search with 401 (PS3.18 10.6; RFC 6750 for bearer tokens). What a
    secure archive should show a stranger; only reported when no root answered openly."""
    http = obs.http
    if http is None or any(q.open for q in http.dicomweb):
        return None
    closed = [q for q in http.dicomweb if q.auth_required]
    if not closed:
        return None
    products = sorted({q.product for q in closed if q.product})
    return _finding(
        "PG-HTTP-DICOMWEB-AUTH",
        f"DICOMweb ({', '.join(products)}) requires authentication",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N",
        {
            "endpoints": [
                {"path": q.path, "status": q.status, "product": q.product} for q in closed
            ],
            "auth_scheme": http.auth_scheme,
            "realm": http.auth_realm,
            "transport": "https" if http.scheme == "https" else "plain HTTP",
        },
        "Nothing to fix here; keep tokens short-lived and revoke unused ones, and serve the "
        "service only over HTTPS.",
        (PS3_18_QIDO, RFC_6750),
    )


def check_http_without_tls(obs: Observations) -> Finding | None:
    """A PACS web service (REST API, DICOMweb, viewer) over plain HTTP."""
    http = obs.http
    if http is None or http.scheme != "http" or not http.pacs:
        return None
    return _finding(
        "PG-HTTP-NO-TLS",
        "PACS web service without TLS"
        + (" (Basic authentication sends passwords in clear)" if http.basic_auth else ""),
        "CVSS:3.1/AV:A/AC:H/PR:N/UI:N/S:U/C:H/I:L/A:N",
        {
            "transport": "plain HTTP",
            "basic_auth_in_clear": http.basic_auth,
            "orthanc": http.orthanc is not None,
            "dicomweb": [q.path for q in http.dicomweb if q.open],
            "viewers": [v.id for v in http.viewers],
        },
        "Serve the REST API, DICOMweb and viewers only over HTTPS (TLS 1.2+, BCP 195), e.g. "
        'Orthanc\'s "SslEnabled" or a TLS reverse proxy, and close the plain HTTP port.',
        (PS3_15_HTTPS, RFC_7617, HIPAA_TRANSMISSION, GDPR_32),
    )


def check_default_credentials(obs: Observations) -> Finding | None:
    """A published default login works (CWE-1392); only a data-free request was sent."""
    http = obs.http
    if http is None or not http.default_credentials:
        return None
    return _finding(
        "PG-HTTP-DEFAULT-CREDENTIALS",
        "Default web login accepted",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        {
            "credentials": [
                {"id": c.id, "username": c.username, "path": c.path}
                for c in http.default_credentials
            ],
            "data_read": False,
        },
        "Change the default password now, give each person their own account, and review "
        "the access log for logins with the default account.",
        (CWE_1392, *(c.source for c in http.default_credentials), HIPAA_AUTH, GDPR_32),
    )


def check_viewer_exposed(obs: Observations) -> Finding | None:
    """Informational: a web viewer or admin UI page is served without a login."""
    http = obs.http
    if http is None or not http.viewers:
        return None
    return _finding(
        "PG-HTTP-VIEWER",
        "Web viewer or administration UI reachable: " + ", ".join(v.name for v in http.viewers),
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N",
        {"viewers": [{"id": v.id, "path": v.path} for v in http.viewers]},
        "Put viewers behind the same authentication as the archive, or off the network.",
        tuple(v.source for v in http.viewers if v.source.startswith("https://")),
    )


HTTP_CHECKS: Final[tuple[Check, ...]] = (
    check_orthanc_open_api,
    check_qido_anonymous,
    check_dicomweb_authentication_required,
    check_http_without_tls,
    check_default_credentials,
    check_viewer_exposed,
)
