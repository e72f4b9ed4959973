"""Certificates for simulated TLS hosts: good ones from a lab CA, and deliberately bad ones.

The lab (and the tests that front real servers with TLS) needs certificates that a careful
deployment would never have: expired, not yet valid, self-signed, 1024-bit RSA, SHA-1 signed.
`cryptography` refuses to sign a certificate with SHA-1, so `CertSpec(hash="sha1")` signs the
to-be-signed part with SHA-1 directly and assembles the certificate's three-field DER sequence
here (RFC 5280 4.1); only RSA keys are supported for that. Nothing here is ever used to protect
real data: the archive's certificates come from `pacsguard.archive.security.bootstrap`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pacsguard.errors import LabError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_SHA256_WITH_RSA: Final = bytes.fromhex("2a864886f70d01010b")  # 1.2.840.113549.1.1.11, DER body
_SHA1_WITH_RSA: Final = bytes.fromhex("2a864886f70d010105")  # 1.2.840.113549.1.1.5


@dataclass(frozen=True, slots=True)
class CertSpec:
    """How to make one certificate. Days are relative to `now` (negative: in the past)."""

    common_name: str
    key: Literal["rsa", "ec"] = "ec"
    key_bits: int = 256  # RSA modulus bits, or the EC curve (256 or 384)
    hash: Literal["sha256", "sha1"] = "sha256"
    valid_from_days: float = -1.0
    valid_until_days: float = 365.0
    self_signed: bool = False
    addresses: tuple[str, ...] = ("127.0.0.1",)
    client: bool = False  # clientAuth instead of serverAuth


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, as PEM."""

    certificate: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (0600) into `directory`; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.key_pem)
        return cert_path, key_path


def _new_key(spec: CertSpec) -> PrivateKey:
    if spec.key == "rsa":
        if spec.key_bits < 512:
            raise LabError(f"RSA keys below 512 bits cannot be made (asked {spec.key_bits})")
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.key_bits)
    curves: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1()}
    if spec.key_bits not in curves:
        raise LabError(f"EC keys are 256 or 384 bits (asked {spec.key_bits})")
    return ec.generate_private_key(curves[spec.key_bits])


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pacsguard lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _resign_sha1(cert: x509.Certificate, key: PrivateKey) -> x509.Certificate:
    """The same certificate signed with SHA-1 with RSA (see the module docstring)."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise LabError("SHA-1 signed lab certificates need an RSA signing key")
    tbs = cert.tbs_certificate_bytes
    if tbs.count(_SHA256_WITH_RSA) != 1:
        raise LabError("cannot find the signature algorithm in the certificate to re-sign")
    tbs = tbs.replace(_SHA256_WITH_RSA, _SHA1_WITH_RSA)  # same length: lengths stay valid
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - deliberately weak
    algorithm = _der(0x30, _der(0x06, _SHA1_WITH_RSA) + b"\x05\x00")
    return x509.load_der_x509_certificate(
        _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    )


def _san(addresses: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for name in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(names)


class LabCA:
    """A throwaway certificate authority that issues lab certificates from `CertSpec`s."""

    def __init__(self, common_name: str = "pacsguard lab CA", *, now: datetime | None = None):
        self._now = now or datetime.now(UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - timedelta(days=1))
            .not_valid_after(self._now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, spec: CertSpec) -> Issued:
        """Make the certificate `spec` describes (self-signed when it says so)."""
        key = _new_key(spec)
        signer: PrivateKey = key if spec.self_signed else self._key
        subject = _name(spec.common_name)
        issuer = subject if spec.self_signed else self.certificate.subject
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if spec.client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now + timedelta(days=spec.valid_from_days))
            .not_valid_after(self._now + timedelta(days=spec.valid_until_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if spec.addresses:
            builder = builder.add_extension(_san(spec.addresses), critical=False)
        if spec.hash == "sha1":
            if not isinstance(signer, rsa.RSAPrivateKey):
                raise LabError("a SHA-1 signed lab certificate must be self-signed with RSA")
            cert = _resign_sha1(builder.sign(signer, hashes.SHA256()), signer)
        else:
            cert = builder.sign(signer, hashes.SHA256())
        return Issued(cert, cert.public_bytes(serialization.Encoding.PEM), _pem(key))
