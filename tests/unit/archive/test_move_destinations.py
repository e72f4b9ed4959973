"""Where C-MOVE sends: registered destinations, with a verifying TLS client context when asked."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import pytest

from pacsguard.archive.app import move_destinations
from pacsguard.archive.config import RegisteredAE, Settings, load_settings
from pacsguard.archive.security.bootstrap import initialize
from pacsguard.archive.security.principal import AuthMethod
from pacsguard.errors import ConfigError

TLS_DEST = RegisteredAE(
    "VIEWER1", AuthMethod.MTLS, cert_sha256="ab" * 32, address="127.0.0.1", port=11112,
    move_destination=True, move_tls=True,
)  # fmt: skip
PLAIN_DEST = RegisteredAE(
    "LOCAL", AuthMethod.ADDRESS, address="127.0.0.1", port=104, move_destination=True
)


def _settings(tmp_path: Path, *aes: RegisteredAE) -> Settings:
    initialize(tmp_path / "data")
    settings = load_settings(tmp_path / "data" / "pacsguard.toml", env={})
    return dataclasses.replace(settings, aes=aes)


def test_tls_destinations_get_a_verifying_client_context(tmp_path: Path) -> None:
    lookup = move_destinations(_settings(tmp_path, TLS_DEST, PLAIN_DEST))
    tls = lookup("VIEWER1 ")
    assert tls is not None and (tls.host, tls.port) == ("127.0.0.1", 11112)
    assert tls.tls is not None
    assert tls.tls.verify_mode is ssl.CERT_REQUIRED and tls.tls.check_hostname
    assert tls.tls.minimum_version >= ssl.TLSVersion.TLSv1_2
    plain = lookup("LOCAL")
    assert plain is not None and plain.tls is None  # loopback: allowed in plaintext
    assert lookup("NOBODY") is None


def test_an_unreadable_destination_ca_stops_the_start(tmp_path: Path) -> None:
    missing = dataclasses.replace(TLS_DEST, move_ca_file=tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError, match="VIEWER1: move_tls needs a readable CA"):
        move_destinations(_settings(tmp_path, missing))
