"""TLS contexts per BCP 195 (RFC 9325) and the DICOM PS3.15 B.9 BCP 195 secure transport profile.

TLS 1.2 is the floor and 1.3 is preferred (OpenSSL negotiates the highest both sides offer).
For TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305) is offered;
TLS 1.3 suites are all AEAD. Compression and renegotiation are off (CRIME; renegotiation
attacks). A client certificate is required when configured, and otherwise requested and verified
if offered (so that AEs registered with auth = "mtls" work without forcing every peer to have one).
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from typing import Final

from cryptography import x509

from pacsguard.archive.config import Settings, TlsSettings
from pacsguard.errors import ConfigError

#: RFC 9325 4.2 recommended TLS 1.2 suites: forward secrecy and AEAD only.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _harden(context: ssl.SSLContext, min_version: str) -> None:
    context.minimum_version = _VERSIONS[min_version]
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE


def server_context(settings: Settings | TlsSettings) -> ssl.SSLContext:
    """The listener's context: our certificate, the CA for client certificates, BCP 195."""
    tls = settings.tls if isinstance(settings, Settings) else settings
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, tls.min_version)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls.cert_file / tls.key_file ({tls.cert_file}, {tls.key_file}) cannot be loaded: "
            f"{exc}; run `pacsguard init` or point them at a PEM certificate and its key"
        ) from None
    if tls.require_client_cert or tls.ca_file.is_file():
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls.ca_file ({tls.ca_file}) cannot be loaded: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """A client context that verifies the server against `ca` (system roots if None)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context, min_version)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.load_verify_locations(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def client_capable(cert_file: Path) -> bool:
    """Whether a PEM certificate may authenticate a TLS client: no extended key usage at all,
    or one that lists clientAuth (certificates from `pacsguard init` before this check had
    serverAuth only)."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usage


def cert_sha256(der: bytes) -> str:
    """The fingerprint we register mTLS peers by: SHA-256 of the DER certificate, hex."""
    return hashlib.sha256(der).hexdigest()


def peer_cert_facts(connection: ssl.SSLSocket | ssl.SSLObject) -> tuple[str, str] | None:
    """(sha256 hex, RFC 4514 subject) of the peer certificate; None when it sent none."""
    der = connection.getpeercert(binary_form=True)
    if not der:
        return None
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return cert_sha256(der), subject
