"""First run (`pacsguard init`): a local CA, a server certificate, an admin secret, keys, config.

Idempotent: what exists is kept, never overwritten; run it again and nothing changes. Private
keys and the at-rest key are written 0600 inside 0700 folders. The admin secret is generated
once, returned to the caller to print, and stored only as an Argon2id hash in the config file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pacsguard.archive.config import DataLayout
from pacsguard.archive.config_template import render_config
from pacsguard.archive.security.tls import cert_sha256
from pacsguard.errors import ConfigError

CA_DAYS: Final = 3650
LEAF_DAYS: Final = 825
AT_REST_KEY_BYTES: Final = 32  # AES-256-GCM
#: HKDF info of the embedded index's SQLCipher key: distinct from the blobs' per-file labels
#: ("pacsguard-blob-v1\0" + blob key, see blobs.aead), so no two uses share a key.
INDEX_KEY_INFO: Final = b"pacsguard-index-sqlcipher-v1"


@dataclass(frozen=True, slots=True)
class LocalCA:
    """The CA that signs our server certificate and registered peers' client certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    cert_path: Path

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> LocalCA:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path}: expected an EC private key for the local CA")
        return cls(certificate, key, cert_path)


@dataclass(frozen=True, slots=True)
class InitResult:
    """What `initialize` made or found. `admin_secret` is set only on the run that created it."""

    layout: DataLayout
    admin_username: str
    admin_ae_title: str
    admin_secret: str | None
    created: tuple[Path, ...] = field(default=())
    kept: tuple[Path, ...] = field(default=())


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; fail if it exists (O_EXCL), so secrets are never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pacsguard local"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _create_ca(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("pacsguard local CA")
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(general)


def _issue(
    ca: LocalCA,
    common_name: str,
    *,
    server: bool,
    sans: Sequence[str],
    now: datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A DICOM node is a server to its peers and a client when it sends (C-MOVE sub-operations
    # to a TLS destination that asks for a client certificate): a server certificate says both.
    usage = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if server
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(_san(sans), critical=False)
    return builder.sign(ca.private_key, hashes.SHA256()), key


def _ensure_ca(layout: DataLayout, now: datetime, created: list[Path], kept: list[Path]) -> LocalCA:
    cert_path, key_path = layout.ca_cert, layout.ca_key
    if cert_path.exists() and key_path.exists():
        kept += [cert_path, key_path]
        return LocalCA.load(cert_path, key_path)
    if cert_path.exists() or key_path.exists():
        raise ConfigError(
            f"only one of {cert_path} and {key_path} exists; restore the other, or remove both "
            "to create a new CA (peers' client certificates must then be issued again)"
        )
    cert, key = _create_ca(now)
    _write_new(key_path, _pem_key(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    created += [cert_path, key_path]
    return LocalCA(cert, key, cert_path)


def _ensure_server_cert(
    layout: DataLayout,
    ca: LocalCA,
    sans: Sequence[str],
    now: datetime,
    created: list[Path],
    kept: list[Path],
) -> None:
    cert_path, key_path = layout.server_cert, layout.server_key
    if cert_path.exists() or key_path.exists():
        kept += [p for p in (cert_path, key_path) if p.exists()]
        return
    names = ["localhost", "127.0.0.1", "::1", *sans]
    cert, key = _issue(ca, "localhost", server=True, sans=names, now=now)
    _write_new(key_path, _pem_key(key), 0o600)
    chain = cert.public_bytes(serialization.Encoding.PEM)
    _write_new(cert_path, chain, 0o644)
    created += [cert_path, key_path]


_SECRET_ALPHABET: Final = string.ascii_letters + string.digits


def new_secret(length: int = 32) -> str:
    """A random secret (~190 bits at 32 characters) safe to paste on a command line."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(length))


def hash_secret(secret: str) -> str:
    """An Argon2id PHC string for `secret` (argon2-cffi's RFC 9106 low-memory defaults)."""
    return PasswordHasher().hash(secret)


def initialize(
    data_dir: Path,
    *,
    ae_title: str = "PACSGUARD",
    extra_sans: Sequence[str] = (),
    admin_username: str = "admin",
    now: datetime | None = None,
) -> InitResult:
    """Create whatever of CA, server certificate, keys, admin and config is missing."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", admin_username):
        raise ConfigError(f"admin username {admin_username!r}: use letters, digits, _ . -")
    moment = now or datetime.now(UTC)
    layout = DataLayout(data_dir.absolute())
    created: list[Path] = []
    kept: list[Path] = []
    _private_dir(layout.data_dir)
    _private_dir(layout.tls_dir)
    _private_dir(layout.at_rest_key.parent)
    _private_dir(layout.audit_log.parent)
    ca = _ensure_ca(layout, moment, created, kept)
    _ensure_server_cert(layout, ca, extra_sans, moment, created, kept)
    if layout.at_rest_key.exists():
        kept.append(layout.at_rest_key)
    else:
        _write_new(layout.at_rest_key, secrets.token_bytes(AT_REST_KEY_BYTES), 0o600)
        created.append(layout.at_rest_key)
    admin_ae = admin_username.upper()[:16]
    secret: str | None = None
    if layout.config_file.exists():
        kept.append(layout.config_file)
    else:
        secret = new_secret()
        text = render_config(
            ae_title=ae_title,
            admin_username=admin_username,
            admin_ae_title=admin_ae,
            admin_hash=hash_secret(secret),
        )
        _write_new(layout.config_file, text.encode("utf-8"), 0o600)
        created.append(layout.config_file)
    return InitResult(layout, admin_username, admin_ae, secret, tuple(created), tuple(kept))


_SAFE_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def issue_client_certificate(
    ca: LocalCA, common_name: str, out_dir: Path, *, now: datetime | None = None
) -> tuple[Path, Path, str]:
    """A client certificate for a peer AE: (cert path, key path, SHA-256 to register).

    Put the SHA-256 in the peer's ``[[ae]] cert_sha256`` with ``auth = "mtls"``.
    """
    return _issue_to_files(ca, common_name, out_dir, server_names=(), now=now)


def issue_server_certificate(
    ca: LocalCA,
    common_name: str,
    out_dir: Path,
    server_names: Sequence[str],
    *,
    now: datetime | None = None,
) -> tuple[Path, Path, str]:
    """A certificate for a peer that listens, such as a C-MOVE destination with move_tls:
    valid for `server_names` (IP addresses or DNS names, as we connect to it), usable as a
    client certificate too. Returns (cert path, key path, SHA-256)."""
    if not server_names:
        raise ValueError("a server certificate needs the address or name it is reached by")
    return _issue_to_files(ca, common_name, out_dir, server_names=server_names, now=now)


def _issue_to_files(
    ca: LocalCA,
    common_name: str,
    out_dir: Path,
    *,
    server_names: Sequence[str],
    now: datetime | None,
) -> tuple[Path, Path, str]:
    stem = _SAFE_FILE_NAME.sub("_", common_name.strip()) or "client"
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"{cert_path} or {key_path} exists; choose another name or folder")
    cert, key = _issue(
        ca,
        common_name,
        server=bool(server_names),
        sans=tuple(server_names),
        now=now or datetime.now(UTC),
    )
    _write_new(key_path, _pem_key(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path, cert_sha256(cert.public_bytes(serialization.Encoding.DER))


def load_at_rest_key(path: Path) -> bytes:
    """The AES-256 key for encryption at rest; refuses a key readable by group or others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"storage.key_file {path} does not exist; run `pacsguard init`") from None
    if mode & 0o077:
        raise ConfigError(f"storage.key_file {path} is readable by others; run chmod 600 {path}")
    key = path.read_bytes()
    if len(key) != AT_REST_KEY_BYTES:
        raise ConfigError(f"storage.key_file {path}: expected {AT_REST_KEY_BYTES} raw bytes")
    return key


def derive_index_key(at_rest_key: bytes) -> bytes:
    """The embedded index's 256-bit SQLCipher key: HKDF-SHA256 of the at-rest key with its own
    label, so that the index key and the blob keys differ while one key file backs both."""
    if len(at_rest_key) != AT_REST_KEY_BYTES:
        raise ValueError(f"the at-rest key must be {AT_REST_KEY_BYTES} bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INDEX_KEY_INFO)
    return hkdf.derive(at_rest_key)
