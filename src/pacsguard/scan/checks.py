"""Checks: pure functions from Observations to Findings. No I/O; unit-tested with plain values.

Each finding's severity is derived from its CVSS 3.1 base score (FIRST's qualitative scale), so
the score and the label can never disagree. Evidence holds counts, AE titles, SOP class names and
category names only: patient values never reach an Observation, so they cannot reach a Finding.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Final

from pacsguard.dicom.phi import PhiCategory
from pacsguard.scan.fingerprints import (
    SERVER_SURFACES,
    Product,
    ProductData,
    Vulnerability,
    default_data,
)
from pacsguard.scan.honeypots import HoneypotVerdict, config_signature, judge
from pacsguard.scan.model import (
    CertificateFacts,
    ClientCertificate,
    Finding,
    HostReport,
    Observations,
    Severity,
    TlsFacts,
)

Check = Callable[[Observations], Finding | None]

HIPAA_ACCESS: Final = "HIPAA 45 CFR 164.312(a)(1) access control"
HIPAA_AUTH: Final = "HIPAA 45 CFR 164.312(d) person or entity authentication"
HIPAA_INTEGRITY: Final = "HIPAA 45 CFR 164.312(c)(1) integrity"
HIPAA_TRANSMISSION: Final = "HIPAA 45 CFR 164.312(e)(1) transmission security"
GDPR_32: Final = "GDPR Art. 32 security of processing"
GDPR_9: Final = "GDPR Art. 9 special categories (health data)"
PS3_7_USER_ID: Final = "DICOM PS3.7 D.3.3.7 user identity negotiation"
PS3_8_AE: Final = "DICOM PS3.8 9.3.4 A-ASSOCIATE-RJ (AE title checks)"
PS3_15_TLS: Final = "DICOM PS3.15 B.9 BCP 195 TLS secure transport connection profile"
PS3_15_DEID: Final = "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile"
RFC_8996: Final = "RFC 8996 deprecating TLS 1.0 and TLS 1.1"
RFC_9325: Final = "RFC 9325 (BCP 195) recommendations for secure use of TLS"
RFC_5280_VALIDITY: Final = "RFC 5280 4.1.2.5 certificate validity period"
NIST_800_131A: Final = "NIST SP 800-131A Rev. 2 cryptographic algorithms and key lengths"
#: Smallest key sizes NIST SP 800-131A accepts for signatures (112-bit security strength).
MIN_KEY_BITS: Final = {"rsa": 2048, "dsa": 2048, "ec": 224}
WEAK_SIGNATURE_HASHES: Final = frozenset({"md5", "sha1"})
LEGACY_TLS_VERSIONS: Final = ("1.0", "1.1")


@cache
def _score(vector: str) -> float:
    from cvss import CVSS3  # only when there is a finding to score: keeps `scan` quick to start

    return float(CVSS3(vector).scores()[0])


def severity_for(score: float) -> Severity:
    """FIRST CVSS 3.1 qualitative severity rating scale."""
    if score == 0.0:
        return Severity.INFO
    if score < 4.0:
        return Severity.LOW
    if score < 7.0:
        return Severity.MEDIUM
    if score < 9.0:
        return Severity.HIGH
    return Severity.CRITICAL


def _finding(
    id_: str,
    title: str,
    vector: str,
    evidence: dict[str, Any],
    remediation: str,
    references: tuple[str, ...],
) -> Finding:
    score = _score(vector)
    return Finding(
        id=id_,
        title=title,
        severity=severity_for(score),
        cvss_vector=vector,
        cvss_score=score,
        evidence=evidence,
        remediation=remediation,
        references=references,
    )


def _anonymous_association(obs: Observations) -> bool:
    """An association was accepted although we presented an unknown calling AE and no identity."""
    return bool(obs.accepted_called_aets)


def check_association_from_any_ae(obs: Observations) -> Finding | None:
    """PS3.8 / PS3.7: an unknown calling AE without user identity was accepted."""
    if not _anonymous_association(obs):
        return None
    return _finding(
        "PG-DIMSE-ANON-ASSOC",
        "DICOM association accepted from an unknown AE without authentication",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N",
        {
            "calling_ae": obs.attempts[-1].calling_ae if obs.attempts else None,
            "accepted_called_aets": list(obs.accepted_called_aets),
            "any_called_ae_accepted": obs.any_called_ae_accepted,
            "accepted_services": list(obs.accepted_services),
        },
        "Accept associations only from registered calling AE titles bound to their network "
        "address, and require PS3.7 user identity (or mutual TLS) for every peer.",
        (PS3_8_AE, PS3_7_USER_ID, HIPAA_AUTH, HIPAA_ACCESS, GDPR_32),
    )


def check_any_called_ae(obs: Observations) -> Finding | None:
    """PS3.8 9.3.4: the called AE title is not checked, so no knowledge is needed to connect."""
    if obs.any_called_ae_accepted is not True:
        return None
    return _finding(
        "PG-DIMSE-ANY-CALLED-AE",
        "Any called AE title is accepted",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N",
        {"called_ae_tried": obs.accepted_called_aets[0] if obs.accepted_called_aets else None},
        "Check the called AE title (reject with reason 7 when it is not this server's title); "
        "it is not a secret, but it stops the cheapest mass scans.",
        (PS3_8_AE, GDPR_32),
    )


def check_default_called_ae(obs: Observations) -> Finding | None:
    """A vendor-default called AE title worked where arbitrary titles did not."""
    if obs.any_called_ae_accepted is not False or not obs.accepted_called_aets:
        return None
    return _finding(
        "PG-DIMSE-DEFAULT-AE",
        "Vendor-default called AE title accepted",
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:N/A:N",
        {"accepted_called_aets": list(obs.accepted_called_aets)},
        "Change the archive's AE title from the product default, and do not rely on it as a "
        "secret: authenticate peers.",
        (PS3_8_AE, GDPR_32),
    )


def check_open_echo(obs: Observations) -> Finding | None:
    """C-ECHO answered to a stranger: confirms a live PACS and its implementation."""
    if obs.echo_status != 0x0000:
        return None
    return _finding(
        "PG-DIMSE-OPEN-ECHO",
        "C-ECHO answered to an unauthenticated peer",
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:N/A:N",
        {
            "echo_status": "0x0000",
            "implementation_class_uid": obs.implementation_class_uid,
            "implementation_version_name": obs.implementation_version_name,
        },
        "Answer verification only to registered, authenticated peers.",
        (PS3_8_AE, GDPR_32),
    )


def check_anonymous_find(obs: Observations) -> Finding | None:
    """Anonymous C-FIND exposes the archive's contents (PS3.4 C; HIPAA access control)."""
    exposure = obs.exposure
    if exposure is None or exposure.method == "none" or obs.http is not None:
        return None  # a web target's exposure has its own findings (PG-HTTP-*)
    if exposure.studies == 0 and exposure.patients == 0:
        return None
    qualifier = "at least " if exposure.lower_bound else ""
    return _finding(
        "PG-DIMSE-ANON-FIND",
        f"Anonymous C-FIND exposes {qualifier}{exposure.studies} studies / "
        f"{exposure.instances} instances",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
        {
            "patients": exposure.patients,
            "studies": exposure.studies,
            "series": exposure.series,
            "instances": exposure.instances,
            "lower_bound": exposure.lower_bound,
            "lower_bound_reasons": [r.value for r in exposure.lower_bound_reasons],
            "method": exposure.method,
        },
        "Disable query/retrieve for unauthenticated peers; allow C-FIND only to registered AEs "
        "with user identity or mutual TLS, and audit every query.",
        (HIPAA_ACCESS, HIPAA_AUTH, GDPR_32, GDPR_9),
    )


def check_phi_exposed(obs: Observations) -> Finding | None:
    """Direct identifiers in query responses (PS3.15 E.1 lists them; GDPR Art. 9 health data)."""
    exposure = obs.exposure
    if exposure is None or not exposure.phi_categories or obs.http is not None:
        return None
    ssn = PhiCategory.PATIENT_ID_SSN_SHAPED in exposure.phi_categories
    vector = (
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:N/A:N"
        if ssn
        else "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"
    )
    title = "Patient identifiers exposed to anonymous queries"
    if ssn:
        title += " (patient IDs shaped like national identifiers)"
    return _finding(
        "PG-DIMSE-PHI-EXPOSED",
        title,
        vector,
        {"phi_categories": sorted(c.value for c in exposure.phi_categories)},
        "Stop anonymous queries; never use national identifiers (SSN) as Patient ID; share "
        "data externally only de-identified.",
        (PS3_15_DEID, HIPAA_ACCESS, GDPR_32, GDPR_9),
    )


def check_store_from_unknown_ae(obs: Observations) -> Finding | None:
    """Storage accepted from an unknown AE: image-injection risk (inferred, no C-STORE sent)."""
    if "storage" not in obs.accepted_services:
        return None
    return _finding(
        "PG-DIMSE-OPEN-STORE",
        "Storage accepted from an unknown AE (image-injection risk)",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:H/A:L",
        {
            "inferred_from": "accepted storage presentation context",
            "c_store_sent": False,
        },
        "Accept C-STORE only from registered modalities bound to their address and "
        "authenticated; reject storage contexts for unknown AEs.",
        (HIPAA_INTEGRITY, HIPAA_AUTH, GDPR_32),
    )


def check_plaintext_dimse(obs: Observations) -> Finding | None:
    """DICOM over plain TCP (PS3.15 B.9 / BCP 195 expects TLS)."""
    if not obs.dicom or obs.tls:
        return None
    return _finding(
        "PG-DIMSE-NO-TLS",
        "DICOM service without TLS",
        "CVSS:3.1/AV:A/AC:H/PR:N/UI:N/S:U/C:H/I:L/A:N",
        {"transport": "plain TCP"},
        "Offer DICOM only over TLS 1.2+ (port 2762), per the BCP 195 profile, with mutual TLS "
        "for peers that support it.",
        (PS3_15_TLS, HIPAA_TRANSMISSION, GDPR_32),
    )


def _tls_service(obs: Observations) -> TlsFacts | None:
    """TLS facts of a DICOM service: DIMSE answered inside TLS, a PACS web service (REST API,
    DICOMweb, viewer) answered over https, or the TLS layer demands a client certificate before
    anything can be spoken (nothing more can be told)."""
    facts = obs.tls_facts
    if facts is None:
        return None
    web = obs.http is not None and obs.http.pacs  # a PACS web service behind TLS (https)
    if obs.dicom or web or facts.client_certificate is ClientCertificate.REQUIRED:
        return facts
    return None


def _certificate(obs: Observations) -> CertificateFacts | None:
    facts = _tls_service(obs)
    return facts.certificate if facts is not None else None


def _certificate_evidence(cert: CertificateFacts, **extra: Any) -> dict[str, Any]:
    return {"subject": cert.subject, "sha256_fingerprint": cert.sha256_fingerprint, **extra}


def check_legacy_tls(obs: Observations) -> Finding | None:
    """TLS 1.0 or 1.1 accepted: deprecated by RFC 8996; BCP 195 and PS3.15 B.9 require 1.2+."""
    facts = _tls_service(obs)
    if facts is None:
        return None
    legacy = [v for v in LEGACY_TLS_VERSIONS if v in facts.versions_accepted]
    if not legacy:
        return None
    return _finding(
        "PG-TLS-LEGACY-VERSION",
        f"Deprecated TLS version{'s' if len(legacy) > 1 else ''} accepted: "
        + ", ".join(f"TLS {v}" for v in legacy),
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:L/A:N",
        {"legacy_versions": legacy, "versions_accepted": list(facts.versions_accepted)},
        "Accept TLS 1.2 and 1.3 only, with AEAD cipher suites (BCP 195 / PS3.15 B.9); update "
        "peers that cannot, or put them behind a TLS 1.2+ terminator.",
        (RFC_8996, RFC_9325, PS3_15_TLS, HIPAA_TRANSMISSION, GDPR_32),
    )


def check_expired_certificate(obs: Observations) -> Finding | None:
    """The server certificate's validity ended (RFC 5280 4.1.2.5): peers must stop verifying."""
    cert = _certificate(obs)
    if cert is None or not cert.expired:
        return None
    return _finding(
        "PG-TLS-CERT-EXPIRED",
        "TLS certificate has expired",
        "CVSS:3.1/AV:A/AC:H/PR:N/UI:N/S:U/C:L/I:L/A:N",
        _certificate_evidence(cert, not_after=cert.not_after),
        "Renew the certificate and automate renewal; peers that still connect are not "
        "verifying certificates, so check their configuration too.",
        (RFC_5280_VALIDITY, RFC_9325, PS3_15_TLS, HIPAA_TRANSMISSION),
    )


def check_certificate_not_yet_valid(obs: Observations) -> Finding | None:
    """The server certificate's validity has not begun (RFC 5280 4.1.2.5): wrong clock or date."""
    cert = _certificate(obs)
    if cert is None or not cert.not_yet_valid:
        return None
    return _finding(
        "PG-TLS-CERT-NOT-YET-VALID",
        "TLS certificate is not valid yet",
        "CVSS:3.1/AV:A/AC:H/PR:N/UI:N/S:U/C:L/I:L/A:N",
        _certificate_evidence(cert, not_before=cert.not_before),
        "Check the server's clock and the certificate's dates; issue a certificate valid now.",
        (RFC_5280_VALIDITY, PS3_15_TLS, HIPAA_TRANSMISSION),
    )


def check_self_signed_certificate(obs: Observations) -> Finding | None:
    """A self-signed server certificate: peers can only pin it or stop verifying (BCP 195)."""
    cert = _certificate(obs)
    if cert is None or not cert.self_signed:
        return None
    return _finding(
        "PG-TLS-CERT-SELF-SIGNED",
        "TLS certificate is self-signed",
        "CVSS:3.1/AV:A/AC:H/PR:N/UI:N/S:U/C:L/I:N/A:N",
        _certificate_evidence(cert),
        "Issue the certificate from a CA your DICOM peers trust (an organisational CA is fine); "
        "where a self-signed certificate must stay, have every peer pin it.",
        (RFC_9325, PS3_15_TLS, HIPAA_TRANSMISSION),
    )


def check_weak_key(obs: Observations) -> Finding | None:
    """A server key below NIST SP 800-131A strength (RSA/DSA < 2048 bits, EC < 224 bits)."""
    cert = _certificate(obs)
    if cert is None or cert.key_bits is None:
        return None
    minimum = MIN_KEY_BITS.get(cert.key_type)
    if minimum is None or cert.key_bits >= minimum:
        return None
    return _finding(
        "PG-TLS-WEAK-KEY",
        f"TLS certificate key too small ({cert.key_type.upper()} {cert.key_bits} bits)",
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:L/A:N",
        _certificate_evidence(
            cert, key_type=cert.key_type, key_bits=cert.key_bits, minimum_bits=minimum
        ),
        "Replace the key and certificate: RSA of at least 2048 bits (3072 for use past 2030) or "
        "an EC key on P-256 or stronger.",
        (NIST_800_131A, RFC_9325, PS3_15_TLS, HIPAA_TRANSMISSION),
    )


def check_weak_signature(obs: Observations) -> Finding | None:
    """A certificate signed with SHA-1 or MD5, hashes with practical collisions (RFC 9325 4.4)."""
    cert = _certificate(obs)
    if cert is None or cert.signature_hash not in WEAK_SIGNATURE_HASHES:
        return None
    return _finding(
        "PG-TLS-WEAK-SIGNATURE",
        f"TLS certificate signed with {cert.signature_hash.upper()}",
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:L/A:N",
        _certificate_evidence(cert, signature_algorithm=cert.signature_algorithm),
        "Reissue the certificate signed with SHA-256 or stronger.",
        (NIST_800_131A, RFC_9325, PS3_15_TLS, HIPAA_TRANSMISSION),
    )


CHECKS: Final[tuple[Check, ...]] = (
    check_association_from_any_ae,
    check_any_called_ae,
    check_default_called_ae,
    check_open_echo,
    check_anonymous_find,
    check_phi_exposed,
    check_store_from_unknown_ae,
    check_plaintext_dimse,
    check_legacy_tls,
    check_expired_certificate,
    check_certificate_not_yet_valid,
    check_self_signed_certificate,
    check_weak_key,
    check_weak_signature,
)


def identify_product(obs: Observations, data: ProductData | None = None) -> Product | None:
    """The product and version the host's own answers name (implementation UID and name,
    Orthanc's `/system` version)."""
    orthanc = obs.http.orthanc if obs.http is not None else None
    evidence = {
        "implementation_class_uid": obs.implementation_class_uid,
        "implementation_version_name": obs.implementation_version_name,
        "http_orthanc_version": orthanc.version if orthanc is not None else None,
    }
    if not any(evidence.values()):
        return None  # nothing to match (e.g. a closed port): do not load the product data
    return (data or default_data()).identify(evidence)


BACKPORT_NOTE: Final = (
    "matched by version only: a remote version string does not show fixes a vendor or "
    "distribution backported (e.g. Debian's dcmtk 3.6.7-9~deb12u*); check the installed "
    "package's changelog"
)


def _cve_finding(product: Product, vuln: Vulnerability) -> Finding:
    version = f" {product.version}" if product.version else ""
    return _finding(
        f"PG-{vuln.cve}",
        f"{product.name}{version}: {vuln.cve}, {vuln.title}",
        vuln.cvss_vector,
        {
            "product": product.id,
            "version": product.version,
            "identified_by": product.basis,
            "cve": vuln.cve,
            "surface": vuln.surface,
            "match": "version-only",
            "note": BACKPORT_NOTE,
            "cvss_vector_source": vuln.cvss_vector_source,
        },
        f"{vuln.remediation} Until then, keep the service off untrusted networks.",
        vuln.references,
    )


def check_known_vulnerabilities(
    obs: Observations, product: Product | None, data: ProductData | None = None
) -> list[Finding]:
    """One finding per CVE whose published range holds the version the host shows.

    Client-side flaws (a DICOM SCU's) say nothing about the scanned server and are skipped."""
    if product is None:
        return []
    vulns = (data or default_data()).vulnerabilities_for(product)
    return [_cve_finding(product, v) for v in vulns if v.surface in SERVER_SURFACES]


def honeypot_finding(verdict: HoneypotVerdict) -> Finding | None:
    """Informational: the host matches honeypot signatures (cited in data/honeypots.json)."""
    if not verdict.matched:
        return None
    flagged = verdict.flagged
    return _finding(
        "PG-HONEYPOT-SUSPECTED" if flagged else "PG-HONEYPOT-HINT",
        "Likely a honeypot: kept out of exposure totals"
        if flagged
        else "Answers like a honeypot in one respect",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N",
        {
            "signatures": [s.id for s in verdict.matched],
            "reasons": list(verdict.reasons),
            "flagged": flagged,
        },
        "If this is your system and not a decoy, make it answer as a conformant DICOM "
        "implementation; the exposure findings still apply.",
        tuple(src for s in verdict.matched for src in s.sources if src.startswith("https://")),
    )


def nothing_to_judge(obs: Observations) -> bool:
    """Nothing answered: no connection (refused, timed out, unreachable), no TLS, no HTTP.

    Every check needs something the host said; a scan of a sparse range is mostly such
    targets, so `assess` returns their report without running the checks
    (`tests/unit/test_checks.py` runs them all on such observations: they find nothing)."""
    return not obs.reachable and obs.tls_facts is None and obs.http is None


def assess(obs: Observations, checks: tuple[Check, ...] = CHECKS) -> HostReport:
    """Run every check, name the product and its known CVEs, judge honeypot signatures;
    findings most severe first."""
    if checks is CHECKS and nothing_to_judge(obs):
        return HostReport(observations=obs)
    return judge_everything(obs, checks)


def judge_everything(obs: Observations, checks: tuple[Check, ...] = CHECKS) -> HostReport:
    """`assess` without its shortcut for targets that never answered."""
    findings = [f for f in (check(obs) for check in checks) if f is not None]
    if obs.http is not None:
        from pacsguard.scan.http_checks import HTTP_CHECKS  # it builds on this module

        findings.extend(f for f in (check(obs) for check in HTTP_CHECKS) if f is not None)
    product = identify_product(obs)
    findings.extend(check_known_vulnerabilities(obs, product))
    verdict = judge(obs)
    hint = honeypot_finding(verdict)
    if hint is not None:
        findings.append(hint)
    findings.sort(key=lambda f: (-f.severity.rank, f.id))
    return HostReport(
        observations=obs,
        findings=tuple(findings),
        product=product,
        honeypot_signatures=tuple(s.id for s in verdict.matched),
        honeypot_reasons=verdict.reasons,
        honeypot_flagged=verdict.flagged,
        config_signature=config_signature(obs),
    )
