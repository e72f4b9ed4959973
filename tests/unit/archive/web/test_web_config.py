"""[dicomweb] settings: parsed and validated like the rest, written by `pacsguard init`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pacsguard.archive.web as web
from pacsguard.archive.config import build_settings, load_settings, validate_listen
from pacsguard.archive.security.bootstrap import initialize
from pacsguard.errors import ConfigError


def test_defaults_off_and_bounded() -> None:
    settings = build_settings({}).dicomweb
    assert settings.enabled is False
    assert settings.cors_origins == ()
    assert settings.max_body_bytes == 1024**3


def test_origins_from_file_and_environment() -> None:
    tree = {"dicomweb": {"cors_origins": ["https://viewer.example.org", "http://127.0.0.1:3000"]}}
    assert build_settings(tree).dicomweb.cors_origins == (
        "https://viewer.example.org",
        "http://127.0.0.1:3000",
    )
    env = {"PACSGUARD_DICOMWEB_CORS_ORIGINS": "https://a.example.org, https://[::1]:8080"}
    assert load_settings(env=env).dicomweb.cors_origins == (
        "https://a.example.org",
        "https://[::1]:8080",
    )


@pytest.mark.parametrize(
    "origins",
    [["*"], ["https://viewer.example.org/"], ["viewer.example.org"], ["ftp://x.org"], [1]],
)
def test_wildcards_paths_and_non_origins_are_refused(origins: list[object]) -> None:
    with pytest.raises(ConfigError, match=re.escape("dicomweb.cors_origins")):
        build_settings({"dicomweb": {"cors_origins": origins}})


@pytest.mark.parametrize(
    ("key", "value"),
    [("port", 0), ("max_body_bytes", 10), ("header_timeout_s", 0), ("max_connections", 0)],
)
def test_out_of_range_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"dicomweb.{key}")):
        build_settings({"dicomweb": {key: value}})


def test_dicomweb_needs_tls() -> None:
    settings = build_settings({"dicomweb": {"enabled": True}, "tls": {"enabled": False}})
    with pytest.raises(ConfigError, match="HTTPS only"):
        validate_listen(settings)


def test_init_writes_the_section_and_it_loads(tmp_path: Path) -> None:
    initialize(tmp_path)
    text = (tmp_path / "pacsguard.toml").read_text()
    assert "[dicomweb]" in text
    settings = load_settings(tmp_path / "pacsguard.toml", env={})
    assert settings.dicomweb == build_settings({}).dicomweb


def test_exported_names_are_what_we_mean() -> None:
    assert set(web.__all__) == {
        "HttpCredential",
        "WebContext",
        "WebFrontEnd",
        "authenticate",
        "build_app",
    }
    for name in web.__all__:
        assert hasattr(web, name)
