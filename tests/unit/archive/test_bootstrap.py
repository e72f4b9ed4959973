from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from pacsguard.archive.config import load_settings, require_files, validate_listen
from pacsguard.archive.security.bootstrap import (
    LocalCA,
    derive_index_key,
    initialize,
    issue_client_certificate,
    issue_server_certificate,
    load_at_rest_key,
)
from pacsguard.archive.security.principal import AuthMethod
from pacsguard.archive.security.tls import cert_sha256
from pacsguard.errors import ConfigError

NOW = datetime(2025, 3, 1, tzinfo=UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_first_run_creates_everything(tmp_path: Path) -> None:
    result = initialize(tmp_path / "data", extra_sans=["pacs.example.org", "192.0.2.7"], now=NOW)
    layout = result.layout
    for path in (
        layout.ca_cert,
        layout.ca_key,
        layout.server_cert,
        layout.server_key,
        layout.at_rest_key,
        layout.config_file,
    ):
        assert path in result.created
        assert path.is_file()
    assert result.kept == ()
    assert result.admin_secret is not None and len(result.admin_secret) >= 32


def test_private_files_are_0600_in_0700_folders(tmp_path: Path) -> None:
    layout = initialize(tmp_path / "data", now=NOW).layout
    for key in (layout.ca_key, layout.server_key, layout.at_rest_key, layout.config_file):
        assert _mode(key) == 0o600, key
    for folder in (layout.data_dir, layout.tls_dir, layout.at_rest_key.parent):
        assert _mode(folder) == 0o700, folder


def test_second_run_changes_nothing_and_reveals_no_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = initialize(data, now=NOW)
    before = _snapshot(data)
    second = initialize(data, extra_sans=["other.example.org"], now=NOW + timedelta(days=1))
    assert second.admin_secret is None
    assert second.created == ()
    assert set(first.created) <= set(second.kept)
    assert _snapshot(data) == before


def test_admin_secret_is_stored_only_as_an_argon2id_hash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = initialize(data, now=NOW)
    secret = result.admin_secret
    assert secret is not None
    for path, content in _snapshot(data).items():
        assert secret.encode() not in content, f"admin secret in clear in {path}"
    settings = load_settings(result.layout.config_file, env={})
    admin = settings.users[result.admin_username]
    assert admin.password_hash is not None and admin.password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(admin.password_hash, secret)


def test_written_config_loads_and_may_listen(tmp_path: Path) -> None:
    result = initialize(tmp_path / "data", ae_title="ARCHIVE1", now=NOW)
    settings = load_settings(result.layout.config_file, env={})
    assert settings.server.ae_title == "ARCHIVE1"
    assert settings.storage.data_dir == result.layout.data_dir
    assert settings.tls.cert_file == result.layout.server_cert
    assert settings.profile == "secure"
    (admin_ae,) = settings.aes
    assert admin_ae.ae_title == result.admin_ae_title
    assert admin_ae.auth is AuthMethod.USER_PASSWORD
    validate_listen(settings)
    require_files(settings)


def test_ca_and_server_certificate(tmp_path: Path) -> None:
    result = initialize(tmp_path / "data", extra_sans=["pacs.example.org", "192.0.2.7"], now=NOW)
    layout = result.layout
    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign is True
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3650)

    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "pacs.example.org"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.0.2.7"),
    }
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(NOW + timedelta(days=1))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    chain = verifier.verify(server, [])
    assert chain[-1] == ca
    # the archive connects out too (C-MOVE to a TLS destination that wants a client certificate)
    assert set(_usage(server)) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def _usage(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_server_certificate_for_a_listening_peer(tmp_path: Path) -> None:
    layout = initialize(tmp_path / "data", now=NOW).layout
    ca = LocalCA.load(layout.ca_cert, layout.ca_key)
    with pytest.raises(ValueError, match="address or name"):
        issue_server_certificate(ca, "VIEWER1", tmp_path / "peers", [])
    cert_path, key_path, sha = issue_server_certificate(
        ca, "VIEWER1", tmp_path / "peers", ["127.0.0.1", "viewer1.example.org"], now=NOW
    )
    assert _mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert sha == cert_sha256(cert.public_bytes(serialization.Encoding.DER))
    verifier = (
        PolicyBuilder()
        .store(Store([ca.certificate]))
        .time(NOW + timedelta(days=1))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    assert verifier.verify(cert, [])[-1] == ca.certificate


def test_client_certificate_for_mtls_peers(tmp_path: Path) -> None:
    layout = initialize(tmp_path / "data", now=NOW).layout
    ca = LocalCA.load(layout.ca_cert, layout.ca_key)
    cert_path, key_path, sha = issue_client_certificate(ca, "CT 1/west", tmp_path / "peers")
    assert cert_path.name == "CT_1_west.crt"
    assert _mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert sha == cert_sha256(cert.public_bytes(serialization.Encoding.DER))
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "CT 1/west"
    assert cert.issuer == ca.certificate.subject
    assert _usage(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(ConfigError, match="exists"):
        issue_client_certificate(ca, "CT 1/west", tmp_path / "peers")


def test_half_a_ca_is_not_replaced(tmp_path: Path) -> None:
    layout = initialize(tmp_path / "data", now=NOW).layout
    layout.ca_key.unlink()
    with pytest.raises(ConfigError, match="only one of"):
        initialize(layout.data_dir, now=NOW)


def test_at_rest_key(tmp_path: Path) -> None:
    layout = initialize(tmp_path / "data", now=NOW).layout
    key = load_at_rest_key(layout.at_rest_key)
    assert len(key) == 32
    layout.at_rest_key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_at_rest_key(layout.at_rest_key)
    with pytest.raises(ConfigError, match="pacsguard init"):
        load_at_rest_key(tmp_path / "missing.key")


def test_the_index_key_is_derived_apart_from_the_blob_keys() -> None:
    at_rest = bytes(range(32))
    index_key = derive_index_key(at_rest)
    assert len(index_key) == 32 and index_key == derive_index_key(at_rest)  # stable
    assert index_key != at_rest and index_key != derive_index_key(bytes(32))
    # RFC 5869 HKDF-SHA256, no salt, its own label: checked against an independent derivation.
    expected = HKDF(hashes.SHA256(), 32, None, b"pacsguard-index-sqlcipher-v1").derive(at_rest)
    assert index_key == expected
    blob_style = HKDF(hashes.SHA256(), 32, None, b"pacsguard-blob-v1\x00").derive(at_rest)
    assert index_key != blob_style
    with pytest.raises(ValueError, match="32 bytes"):
        derive_index_key(b"short")
