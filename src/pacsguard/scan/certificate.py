"""Facts about a server certificate, read from its DER bytes: pure, no network, no trust.

The scanner observes; it does not validate a chain. `self_signed` means the issuer name is the
subject name and the certificate's signature verifies with its own public key (or, for signature
algorithms `cryptography` no longer verifies, such as SHA-1 with RSA, with the matching
primitive directly). Names and counts are bounded: a certificate is remote, untrusted input.
"""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ObjectIdentifier, SignatureAlgorithmOID

from pacsguard.scan.model import CertificateFacts

#: Longest subject/issuer string and most names kept from one certificate.
MAX_NAME_CHARS: Final = 256
MAX_NAMES: Final = 16
#: Signature algorithm names as `cryptography` spells its constants: rsa-with-sha1, ed25519...
_SIGNATURE_NAMES: Final = {
    value: name.lstrip("_").lower().replace("_", "-")
    for name, value in vars(SignatureAlgorithmOID).items()
    if isinstance(value, ObjectIdentifier)
}


class CertificateUnreadable(ValueError):
    """The peer's certificate bytes do not decode as an X.509 certificate."""


#: What `cryptography` raises, eagerly or from lazily parsed fields, for malformed certificates.
_MALFORMED: Final = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 3] + "..."


def _names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(_bounded(n) for n in san.get_values_for_type(x509.DNSName))[:MAX_NAMES]
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))[:MAX_NAMES]
    except (x509.ExtensionNotFound, *_MALFORMED):
        return (), ()
    return dns, ips


def _key(cert: x509.Certificate) -> tuple[str, int | None]:
    try:
        key = cert.public_key()
    except _MALFORMED:
        return "unknown", None
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "dsa", key.key_size
    return "unknown", None


def _signature_hash(cert: x509.Certificate) -> hashes.HashAlgorithm | None:
    try:
        return cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None


def _signed_by_own_key(cert: x509.Certificate) -> bool:
    """Whether the certificate's signature verifies with its own public key."""
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except InvalidSignature:
        return False
    except _MALFORMED:
        pass  # an algorithm cryptography refuses for certificates (SHA-1, MD5): check by hand
    algorithm = _signature_hash(cert)
    try:
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
            return True
        if isinstance(key, dsa.DSAPublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, algorithm)
            return True
    except (InvalidSignature, *_MALFORMED):
        return False
    return False


def certificate_facts(der: bytes, *, now: datetime | None = None) -> CertificateFacts:
    """Read the facts a check needs from a DER certificate; CertificateUnreadable if it is not
    one. A remote's malformed certificate is its problem, not ours: `cryptography`'s warnings
    about it (negative serial numbers, odd attribute lengths) are not passed on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _facts(x509.load_der_x509_certificate(der), der, now or datetime.now(UTC))
        except _MALFORMED as exc:
            raise CertificateUnreadable(f"not a readable X.509 certificate: {exc}") from None


def _facts(cert: x509.Certificate, der: bytes, moment: datetime) -> CertificateFacts:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    dns, ips = _names(cert)
    key_type, key_bits = _key(cert)
    algorithm = _signature_hash(cert)
    oid = cert.signature_algorithm_oid
    return CertificateFacts(
        subject=_bounded(cert.subject.rfc4514_string()),
        issuer=_bounded(cert.issuer.rfc4514_string()),
        dns_names=dns,
        ip_addresses=ips,
        not_before=not_before.isoformat(),
        not_after=not_after.isoformat(),
        expired=moment > not_after,
        not_yet_valid=moment < not_before,
        self_signed=cert.issuer == cert.subject and _signed_by_own_key(cert),
        key_type=key_type,
        key_bits=key_bits,
        signature_algorithm=_SIGNATURE_NAMES.get(oid, oid.dotted_string),
        signature_hash=algorithm.name if algorithm is not None else None,
        sha256_fingerprint=hashlib.sha256(der).hexdigest(),
    )
