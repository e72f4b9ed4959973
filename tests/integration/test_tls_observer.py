"""The TLS observer against real OpenSSL servers (Python's ssl) on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pacsguard.dicom.client import Timeouts
from pacsguard.lab.certificates import CertSpec, LabCA
from pacsguard.scan.model import ClientCertificate, TlsFacts
from pacsguard.scan.tls import observe_tls

TIMEOUTS = Timeouts(connect=5.0, read=5.0)


def server_context(
    tmp_path: Path,
    spec: CertSpec,
    *,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion] = (
        ssl.TLSVersion.TLSv1_2,
        ssl.TLSVersion.TLSv1_3,
    ),
    client_cert: ssl.VerifyMode = ssl.CERT_NONE,
) -> ssl.SSLContext:
    ca = LabCA()
    cert, key = ca.issue(spec).write(tmp_path, "server")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = versions
    context.load_cert_chain(cert, key)
    if client_cert is not ssl.CERT_NONE:
        context.load_verify_locations(tmp_path / "ca.crt")
        context.verify_mode = client_cert
    return context


async def _serve_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(4096):
            pass
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


def observe(context: ssl.SSLContext) -> TlsFacts | None:
    async def run() -> TlsFacts | None:
        server = await asyncio.start_server(_serve_until_eof, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            return await observe_tls("127.0.0.1", port, TIMEOUTS)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def test_modern_server(tmp_path: Path) -> None:
    facts = observe(server_context(tmp_path, CertSpec("modern.lab")))
    assert facts is not None
    assert facts.versions_accepted == ("1.2", "1.3")
    assert facts.versions_refused == ("1.0", "1.1")
    assert facts.negotiated_version == "1.3"
    assert facts.client_certificate is ClientCertificate.NOT_REQUESTED
    cert = facts.certificate
    assert cert is not None
    assert (cert.key_type, cert.key_bits) == ("ec", 256)
    assert cert.signature_hash == "sha256"
    assert cert.self_signed is False
    assert cert.expired is False and cert.not_yet_valid is False
    assert "CN=modern.lab" in cert.subject
    assert cert.ip_addresses == ("127.0.0.1",)


def test_legacy_weak_expired_self_signed(tmp_path: Path) -> None:
    spec = CertSpec(
        "legacy.lab",
        key="rsa",
        key_bits=1024,
        hash="sha1",
        valid_from_days=-400,
        valid_until_days=-30,
        self_signed=True,
    )
    context = server_context(
        tmp_path, spec, versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    )
    facts = observe(context)
    assert facts is not None
    assert facts.versions_accepted == ("1.0", "1.1")
    assert facts.versions_refused == ("1.2", "1.3")
    assert facts.negotiated_version == "1.1"
    cert = facts.certificate
    assert cert is not None
    assert (cert.key_type, cert.key_bits) == ("rsa", 1024)
    assert cert.signature_algorithm == "rsa-with-sha1"
    assert cert.signature_hash == "sha1"
    assert cert.self_signed is True
    assert cert.expired is True


def test_not_yet_valid(tmp_path: Path) -> None:
    spec = CertSpec("future.lab", valid_from_days=10, valid_until_days=400)
    facts = observe(server_context(tmp_path, spec))
    assert facts is not None and facts.certificate is not None
    assert facts.certificate.not_yet_valid is True
    assert facts.certificate.expired is False


@pytest.mark.parametrize(
    ("versions", "mode", "expected"),
    [
        ((ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3), ssl.CERT_REQUIRED, "required"),
        ((ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3), ssl.CERT_REQUIRED, "required"),
        ((ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2), ssl.CERT_REQUIRED, "required"),
        ((ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3), ssl.CERT_OPTIONAL, "requested"),
        ((ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3), ssl.CERT_OPTIONAL, "requested"),
    ],
)
def test_client_certificate_policy(
    tmp_path: Path,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
    mode: ssl.VerifyMode,
    expected: str,
) -> None:
    context = server_context(tmp_path, CertSpec("mutual.lab"), versions=versions, client_cert=mode)
    facts = observe(context)
    assert facts is not None
    assert facts.client_certificate == expected
    assert facts.certificate is not None
    assert facts.versions_accepted == tuple(
        name
        for name, v in (("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3))
        if versions[0] <= v <= versions[1]
    )


def test_plaintext_server_is_not_tls() -> None:
    async def answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async def run(handler: Callable[..., Awaitable[None]]) -> TlsFacts | None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await observe_tls("127.0.0.1", port, TIMEOUTS)
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(run(answer_garbage)) is None


def test_versions_that_could_not_be_tried_are_untested_not_refused(tmp_path: Path) -> None:
    context = server_context(tmp_path, CertSpec("gone.lab"))

    async def run() -> TlsFacts | None:
        servers: list[asyncio.Server] = []

        async def serve_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            servers[0].close()  # the listener goes away after the first handshake
            await _serve_until_eof(reader, writer)

        server = await asyncio.start_server(serve_once, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        try:
            return await observe_tls("127.0.0.1", port, TIMEOUTS)
        finally:
            server.close()
            await server.wait_closed()

    facts = asyncio.run(run())
    assert facts is not None
    assert facts.versions_accepted == ("1.3",)
    assert facts.versions_refused == ()
    assert facts.versions_untested == ("1.0", "1.1", "1.2")
    assert facts.certificate is not None
