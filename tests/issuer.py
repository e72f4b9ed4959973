"""A test OAuth2 issuer: RSA and EC keys, their JWKS, signed tokens, and a real HTTPS JWKS
endpoint on 127.0.0.1 with a certificate from a CA made here (cryptography)."""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ISSUER = "https://idp.test"
AUDIENCE = "pacsguard"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of `key` (RFC 7517), with `extra` members (alg, use, key_ops...)."""
    algorithm: Any = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else (jwt.algorithms.ECAlgorithm)
    )
    body: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    if kid is not None:
        body["kid"] = kid
    body.update(extra)
    return body


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "scope": "pacs.read",
        "jti": "token-1",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def token(
    key: PrivateKey | bytes | str | None,
    kid: str | None,
    alg: str | None = None,
    **claim_overrides: Any,
) -> str:
    """A token signed with `key` (RS256 for RSA, ES256 for EC unless `alg` says otherwise)."""
    if alg is None:
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**claim_overrides), key, algorithm=alg, headers=headers)


def signed_payload(key: PrivateKey, kid: str, body: dict[str, Any]) -> str:
    """`body` signed as it is (jwt.encode checks some claims' types; a forger would not)."""
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.PyJWS().encode(json.dumps(body).encode(), key, algorithm=alg, headers={"kid": kid})


def unsigned(**claim_overrides: Any) -> str:
    """A token with alg "none" and no signature (PyJWT refuses to make one on purpose)."""
    return jwt.encode(claims(**claim_overrides), None, algorithm="none", headers={"kid": "rsa-1"})


# -- HTTPS endpoint -------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class IssuerCA:
    """A CA and a server certificate for 127.0.0.1, as PEM files in `folder`."""

    folder: Path
    ca_file: Path = field(init=False)
    cert_file: Path = field(init=False)
    key_file: Path = field(init=False)

    def __post_init__(self) -> None:
        now = datetime.now(UTC)
        ca_key = ec_key()
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("test issuer CA"))
            .issuer_name(_name("test issuer CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        leaf_key = ec_key()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.folder / "ca.pem"
        self.cert_file = self.folder / "server.pem"
        self.key_file = self.folder / "server.key"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


class JwksEndpoint:
    """What the HTTPS endpoint serves, and what it saw. Change `keys` or `status` any time."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.status = 200
        #: Seconds between the bytes of the body (a server that trickles); 0: all at once.
        self.trickle_s = 0.0
        self.requests = 0
        self.url = ""
        self._lock = threading.Lock()

    def answer(self) -> tuple[int, bytes]:
        with self._lock:
            self.requests += 1
            return self.status, json.dumps({"keys": self.keys}).encode()


@contextmanager
def serve_jwks(ca: IssuerCA, endpoint: JwksEndpoint) -> Iterator[ThreadingHTTPServer]:
    """Serve `endpoint` over HTTPS on 127.0.0.1 (an ephemeral port) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/.well-known/jwks.json":
                self.send_error(404)
                return
            status, body = endpoint.answer()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not endpoint.trickle_s:
                self.wfile.write(body)
                return
            for byte in body:
                time.sleep(endpoint.trickle_s)
                self.wfile.write(bytes([byte]))
                self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.cert_file, ca.key_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    endpoint.url = f"https://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
