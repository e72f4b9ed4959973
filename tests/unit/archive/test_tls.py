"""Real TLS handshakes on 127.0.0.1 against `server_context`, with certificates from `init`."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pacsguard.archive.config import DataLayout, TlsSettings
from pacsguard.archive.security.bootstrap import LocalCA, initialize, issue_client_certificate
from pacsguard.archive.security.tls import (
    client_capable,
    client_context,
    peer_cert_facts,
    server_context,
)


@dataclass
class Outcome:
    version: str | None = None
    cipher: str | None = None
    peer: tuple[str, str] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Pki:
    layout: DataLayout
    tls: TlsSettings
    client_cert: Path
    client_key: Path
    client_sha256: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    layout = initialize(root / "data").layout
    ca = LocalCA.load(layout.ca_cert, layout.ca_key)
    cert, key, sha = issue_client_certificate(ca, "CT1", root / "peers")
    tls = TlsSettings(
        cert_file=layout.server_cert, key_file=layout.server_key, ca_file=layout.ca_cert
    )
    return Pki(layout, tls, cert, key, sha)


class OneShotServer:
    """Accept one connection, run the handshake with `context`, send b"ok", report."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.outcome = Outcome()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.outcome.error = exc
            self.outcome.done.set()
            return
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.outcome.version = tls.version()
                cipher = tls.cipher()
                self.outcome.cipher = cipher[0] if cipher else None
                self.outcome.peer = peer_cert_facts(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            self.outcome.error = exc
        finally:
            conn.close()
            self.outcome.done.set()

    def close(self) -> Outcome:
        self.outcome.done.wait(10)
        self.thread.join(10)
        self.listener.close()
        return self.outcome


@pytest.fixture
def serve() -> Iterator[type[OneShotServer]]:
    servers: list[OneShotServer] = []

    class Tracked(OneShotServer):
        def __init__(self, context: ssl.SSLContext) -> None:
            super().__init__(context)
            servers.append(self)

    yield Tracked
    for server in servers:
        server.close()


def talk(port: int, context: ssl.SSLContext) -> bytes:
    """Handshake and read the greeting; raises SSLError/OSError if the server refused us."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.recv(2)


def _client(pki: Pki, **kwargs: Path) -> ssl.SSLContext:
    return client_context(pki.layout.ca_cert, **kwargs)


def test_tls13_is_preferred(pki: Pki, serve: type[OneShotServer]) -> None:
    server = serve(server_context(pki.tls))
    assert talk(server.port, _client(pki)) == b"ok"
    outcome = server.close()
    assert outcome.version == "TLSv1.3"
    assert outcome.peer is None  # no client certificate offered


def test_tls12_works_with_an_aead_cipher(pki: Pki, serve: type[OneShotServer]) -> None:
    server = serve(server_context(pki.tls))
    client = _client(pki)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert talk(server.port, client) == b"ok"
    outcome = server.close()
    assert outcome.version == "TLSv1.2"
    assert outcome.cipher is not None
    assert "GCM" in outcome.cipher or "CHACHA20" in outcome.cipher


def _tls11_client(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.layout.ca_cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def _permissive_server(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(pki.layout.server_cert, pki.layout.server_key)
    return context


def test_tls11_client_is_refused(pki: Pki, serve: type[OneShotServer]) -> None:
    # Control: this client really speaks TLS 1.1 (else the refusal below would prove nothing).
    control = serve(_permissive_server(pki))
    try:
        talk(control.port, _tls11_client(pki))
    except (ssl.SSLError, OSError) as exc:
        control.close()
        pytest.skip(f"this OpenSSL build cannot negotiate TLS 1.1 at all: {exc}")
    assert control.close().version == "TLSv1.1"

    server = serve(server_context(pki.tls))
    with pytest.raises((ssl.SSLError, OSError)):
        talk(server.port, _tls11_client(pki))
    outcome = server.close()
    assert outcome.version is None
    assert isinstance(outcome.error, ssl.SSLError)


def test_tls12_cbc_cipher_is_refused(pki: Pki, serve: type[OneShotServer]) -> None:
    def cbc_client() -> ssl.SSLContext:
        context = _client(pki)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
        return context

    control = serve(_permissive_server(pki))
    assert talk(control.port, cbc_client()) == b"ok"
    assert control.close().cipher == "ECDHE-ECDSA-AES128-SHA256"

    server = serve(server_context(pki.tls))
    with pytest.raises((ssl.SSLError, OSError)):
        talk(server.port, cbc_client())
    assert server.close().version is None


def test_hardening_options(pki: Pki) -> None:
    context = server_context(pki.tls)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    strict = server_context(dataclasses.replace(pki.tls, min_version="1.3"))
    assert strict.minimum_version is ssl.TLSVersion.TLSv1_3


def test_client_certificate_required_when_configured(pki: Pki, serve: type[OneShotServer]) -> None:
    required = dataclasses.replace(pki.tls, require_client_cert=True)
    server = serve(server_context(required))
    with pytest.raises((ssl.SSLError, OSError)):
        talk(server.port, _client(pki))  # TLS 1.3: the alert arrives on the first read
    outcome = server.close()
    assert outcome.version is None
    assert isinstance(outcome.error, ssl.SSLError)

    server = serve(server_context(required))
    client = _client(pki, cert=pki.client_cert, key=pki.client_key)
    assert talk(server.port, client) == b"ok"
    outcome = server.close()
    assert outcome.peer is not None
    sha, subject = outcome.peer
    assert sha == pki.client_sha256
    assert "CN=CT1" in subject


def test_optional_client_certificate_is_still_verified_and_reported(
    pki: Pki, serve: type[OneShotServer], tmp_path: Path
) -> None:
    server = serve(server_context(pki.tls))
    client = _client(pki, cert=pki.client_cert, key=pki.client_key)
    assert talk(server.port, client) == b"ok"
    outcome = server.close()
    assert outcome.peer is not None and outcome.peer[0] == pki.client_sha256

    # A certificate from some other CA is refused, not silently ignored.
    stranger = initialize(tmp_path / "other").layout
    other_ca = LocalCA.load(stranger.ca_cert, stranger.ca_key)
    cert, key, _ = issue_client_certificate(other_ca, "MALLORY", tmp_path / "m")
    server = serve(server_context(pki.tls))
    with pytest.raises((ssl.SSLError, OSError)):
        talk(server.port, _client(pki, cert=cert, key=key))
    assert server.close().peer is None


def _self_signed(path: Path, usage: list[x509.ObjectIdentifier] | None) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old archive")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def test_which_certificates_may_act_as_a_tls_client(pki: Pki, tmp_path: Path) -> None:
    assert client_capable(pki.tls.cert_file)  # what `pacsguard init` issues now
    assert client_capable(pki.client_cert)
    server_only = [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert not client_capable(_self_signed(tmp_path / "old.pem", server_only))
    assert client_capable(_self_signed(tmp_path / "any.pem", None))
