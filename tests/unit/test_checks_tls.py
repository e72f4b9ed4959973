"""TLS checks and certificate facts, from plain values and lab-made certificates."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from pacsguard.lab.certificates import CertSpec, LabCA
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.scan.certificate import CertificateUnreadable, certificate_facts
from pacsguard.scan.checks import assess, severity_for
from pacsguard.scan.model import (
    AssociationAttempt,
    CertificateFacts,
    ClientCertificate,
    Observations,
    Outcome,
    Target,
    TlsFacts,
)
from pacsguard.scan.tls import first_certificate, server_hello_version

TARGET = Target("127.0.0.1", 2762, "dimse-tls")
TLS_IDS = {
    "PG-TLS-LEGACY-VERSION",
    "PG-TLS-CERT-EXPIRED",
    "PG-TLS-CERT-NOT-YET-VALID",
    "PG-TLS-CERT-SELF-SIGNED",
    "PG-TLS-WEAK-KEY",
    "PG-TLS-WEAK-SIGNATURE",
}


def der(spec: CertSpec) -> bytes:
    issued = LabCA().issue(spec)
    return issued.certificate.public_bytes(serialization.Encoding.DER)


def good_certificate() -> CertificateFacts:
    return certificate_facts(der(CertSpec("pacs.lab")))


def tls_obs(facts: TlsFacts, *, dicom: bool = True) -> Observations:
    attempt = AssociationAttempt(
        "PACSGUARD", "ANY-SCP", Outcome.REJECTED, "called-ae-title-not-recognized", tls=True
    )
    return Observations(
        target=TARGET,
        reachable=True,
        dicom=dicom,
        attempts=(attempt,) if dicom else (),
        any_called_ae_accepted=False,
        tls=True,
        tls_facts=facts,
    )


def tls_ids(obs: Observations) -> set[str]:
    return {f.id for f in assess(obs).findings}


def test_modern_tls_with_a_ca_issued_certificate_has_no_finding() -> None:
    facts = TlsFacts(("1.2", "1.3"), ("1.0", "1.1"), certificate=good_certificate())
    assert tls_ids(tls_obs(facts)) == set()


def test_every_weakness_has_its_finding() -> None:
    weak = certificate_facts(
        der(
            CertSpec(
                "old.lab",
                key="rsa",
                key_bits=1024,
                hash="sha1",
                valid_from_days=-800,
                valid_until_days=-10,
                self_signed=True,
            )
        )
    )
    facts = TlsFacts(("1.0", "1.1", "1.2"), ("1.3",), certificate=weak)
    report = assess(tls_obs(facts))
    found = {f.id: f for f in report.findings}
    assert set(found) == TLS_IDS - {"PG-TLS-CERT-NOT-YET-VALID"}
    assert found["PG-TLS-LEGACY-VERSION"].evidence["legacy_versions"] == ["1.0", "1.1"]
    assert found["PG-TLS-WEAK-KEY"].evidence["key_bits"] == 1024
    assert "SHA1" in found["PG-TLS-WEAK-SIGNATURE"].title
    for finding in report.findings:
        assert severity_for(finding.cvss_score) is finding.severity
        assert finding.references and finding.remediation
        json.dumps(finding.evidence)
    # DIMSE ran inside TLS: the plaintext finding must not fire.
    assert "PG-DIMSE-NO-TLS" not in found


def test_not_yet_valid_certificate() -> None:
    future = certificate_facts(der(CertSpec("soon.lab", valid_from_days=3)))
    assert tls_ids(tls_obs(TlsFacts(("1.3",), certificate=future))) == {"PG-TLS-CERT-NOT-YET-VALID"}


def test_tls_findings_need_dicom_or_a_required_client_certificate() -> None:
    facts = TlsFacts(("1.0",), certificate=good_certificate())
    assert tls_ids(tls_obs(facts, dicom=False)) == set()
    mutual = replace(facts, client_certificate=ClientCertificate.REQUIRED)
    assert tls_ids(tls_obs(mutual, dicom=False)) == {"PG-TLS-LEGACY-VERSION"}


def test_small_ec_key_and_strong_keys() -> None:
    cert = good_certificate()
    assert tls_ids(tls_obs(TlsFacts(("1.3",), certificate=replace(cert, key_bits=192)))) == {
        "PG-TLS-WEAK-KEY"
    }
    rsa = replace(cert, key_type="rsa", key_bits=2048)
    assert tls_ids(tls_obs(TlsFacts(("1.3",), certificate=rsa))) == set()


def test_certificate_facts() -> None:
    now = datetime.now(UTC)
    facts = certificate_facts(
        der(CertSpec("pacs.lab", key="rsa", key_bits=2048, addresses=("127.0.0.1", "pacs.lab")))
    )
    assert facts.subject == "CN=pacs.lab,O=pacsguard lab"
    assert facts.issuer == "CN=pacsguard lab CA,O=pacsguard lab"
    assert facts.self_signed is False
    assert (facts.key_type, facts.key_bits) == ("rsa", 2048)
    assert facts.signature_algorithm == "ecdsa-with-sha256"  # signed by the EC lab CA
    assert facts.dns_names == ("pacs.lab",)
    assert facts.ip_addresses == ("127.0.0.1",)
    assert len(facts.sha256_fingerprint) == 64
    later = certificate_facts(der(CertSpec("x")), now=now + timedelta(days=400))
    assert later.expired is True


def test_unreadable_certificate_is_a_clear_error() -> None:
    with pytest.raises(CertificateUnreadable):
        certificate_facts(b"\x30\x03\x02\x01\x00")


def test_corrupted_certificates_give_facts_or_a_clear_error_and_no_warning() -> None:
    # A server's certificate is untrusted input: flipped bytes (bad versions, duplicate
    # extensions, unsupported names, negative serials) must not escape as other exceptions or
    # as warnings (pytest turns warnings into errors).
    originals = [
        der(CertSpec("a.lab", key="rsa", key_bits=1024, hash="sha1", self_signed=True)),
        der(CertSpec("b.lab", addresses=("127.0.0.1", "b.lab"))),
    ]
    rng = random.Random(20261205)
    unreadable = 0
    for _ in range(3000):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            certificate_facts(bytes(data))
        except CertificateUnreadable:
            unreadable += 1
    assert 0 < unreadable < 3000


def test_tls_facts_in_the_record_match_the_schema() -> None:
    import jsonschema

    weak = certificate_facts(der(CertSpec("old.lab", self_signed=True)))
    facts = TlsFacts(
        ("1.2", "1.3"),
        ("1.0",),
        ("1.1",),
        negotiated_version="1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        client_certificate=ClientCertificate.REQUESTED,
        certificate=weak,
    )
    record = to_record(assess(tls_obs(facts)))
    jsonschema.validate(record, load_schema())
    assert record["transport"] == "dimse-tls"
    assert record["tls_facts"]["client_certificate"] == "requested"
    assert record["tls_facts"]["certificate"]["self_signed"] is True
    assert record["association"]["attempts"][0]["tls"] is True


def test_server_hello_parsing() -> None:
    random = bytes(32)
    body12 = b"\x03\x03" + random + b"\x00" + b"\xc0\x2f" + b"\x00" + b"\x00\x00"
    assert server_hello_version(b"\x02\x00\x00\x00" + body12) == 0x0303
    ext = b"\x00\x2b\x00\x02\x03\x04"
    body13 = b"\x03\x03" + random + b"\x00" + b"\x13\x01" + b"\x00" + b"\x00\x06" + ext
    assert server_hello_version(b"\x02\x00\x00\x00" + body13) == 0x0304
    assert server_hello_version(b"\x02") == -1
    # A truncated extension list never reads past the message.
    assert server_hello_version(b"\x02\x00\x00\x00" + body13[:-3]) == 0x0303


def test_certificate_message_parsing() -> None:
    cert = der(CertSpec("pacs.lab"))
    entry = len(cert).to_bytes(3, "big") + cert
    tls12 = b"\x0b\x00\x00\x00" + len(entry).to_bytes(3, "big") + entry
    assert first_certificate(tls12, tls13=False) == cert
    entry13 = entry + b"\x00\x00"
    tls13 = b"\x0b\x00\x00\x00" + b"\x00" + len(entry13).to_bytes(3, "big") + entry13
    assert first_certificate(tls13, tls13=True) == cert
    assert first_certificate(tls12[:20], tls13=False) is None


def test_handshake_parsers_never_raise_on_garbage() -> None:
    # They run inside OpenSSL's message hook, where an exception would break the handshake.
    rng = random.Random(7)
    for _ in range(5000):
        message = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        assert isinstance(server_hello_version(message), int)
        result = first_certificate(message, tls13=rng.random() < 0.5)
        assert result is None or isinstance(result, bytes)
