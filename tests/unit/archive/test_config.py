from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from pacsguard.archive.config import (
    Settings,
    build_settings,
    env_variables,
    is_loopback,
    load_settings,
    require_files,
    validate_listen,
)
from pacsguard.archive.security.principal import Action, AuthMethod
from pacsguard.errors import ConfigError, UsageError

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$6Jq3QK4y3o3z9xU8m1m3Vw"
SHA = "ab" * 32


def _tree(*aes: dict[str, Any], **top: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "users": {"alice": {"password_hash": HASH, "roles": ["viewer"]}},
        "ae": list(aes),
    }
    tree.update(top)
    return tree


def test_defaults_are_secure() -> None:
    settings = load_settings(env={})
    assert settings.profile == "secure"
    assert settings.server.host == "127.0.0.1"
    assert settings.server.dimse_port == 2762
    assert settings.server.plaintext_port is None
    assert settings.tls.enabled is True
    assert settings.tls.min_version == "1.2"
    assert settings.storage.encrypt_at_rest is True
    assert settings.security.allow_address_auth is False
    assert settings.aes == ()
    data_dir = settings.storage.data_dir
    assert data_dir.is_absolute()
    assert settings.tls.cert_file == data_dir / "tls" / "server.crt"
    assert settings.audit.log_path == data_dir / "audit" / "audit.jsonl"
    assert settings.storage.index_url == f"sqlite:///{data_dir / 'index.sqlite3'}"


def test_settings_are_immutable() -> None:
    settings = load_settings(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.host = "0.0.0.0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.users["mallory"] = settings.users.get("x")  # type: ignore[index]


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "pacsguard.toml"
    config.write_text(
        '[server]\nhost = "198.51.100.1"\ndimse_port = 3000\nmax_associations = 4\n'
        '[storage]\ndata_dir = "data"\n[tls]\ncert_file = "certs/s.pem"\n',
        encoding="utf-8",
    )
    settings = load_settings(
        config,
        env={"PACSGUARD_SERVER_DIMSE_PORT": "3001", "PACSGUARD_SERVER_MAX_ASSOCIATIONS": "5"},
        overrides={"server.dimse_port": 3002, "server.host": None},
    )
    assert settings.server.host == "198.51.100.1"  # file; a None override is ignored
    assert settings.server.max_associations == 5  # env over file
    assert settings.server.dimse_port == 3002  # CLI over env
    # relative paths in the file are relative to the file; unset ones follow data_dir
    assert settings.tls.cert_file == tmp_path / "certs" / "s.pem"
    assert settings.storage.data_dir == tmp_path / "data"
    assert settings.tls.key_file == tmp_path / "data" / "tls" / "server.key"


def test_a_bad_value_from_the_command_line_is_fixed_there_not_in_the_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "pacsguard.toml"
    config.write_text("[server]\ndimse_port = 3000\n", encoding="utf-8")
    with pytest.raises(ConfigError) as cli:
        load_settings(config, env={}, overrides={"server.dimse_port": 0})
    assert "(from command line)" in str(cli.value) and str(cli.value).endswith("fix that option")
    config.write_text("[server]\ndimse_port = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"set \[server\] dimse_port in the config file"):
        load_settings(config, env={})


def test_a_missing_config_names_the_init_that_makes_it_in_that_folder(tmp_path: Path) -> None:
    # A bare `pacsguard init` would make ./pacsguard-data, not the folder the user named.
    folder = tmp_path / "typo"
    with pytest.raises(ConfigError) as missing:
        load_settings(folder / "pacsguard.toml", env={})
    assert f"`pacsguard init --data-dir {folder}` creates" in str(missing.value)


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('profile = "secure"\n[server]\nae_title = "FROMFILE"\n', encoding="utf-8")
    settings = load_settings(env={"PACSGUARD_CONFIG": str(config)})
    assert settings.server.ae_title == "FROMFILE"


def test_env_booleans_and_optional_values() -> None:
    settings = load_settings(
        env={
            "PACSGUARD_TLS_REQUIRE_CLIENT_CERT": "yes",
            "PACSGUARD_SERVER_PLAINTEXT_PORT": "11112",
            "PACSGUARD_AUDIT_SYSLOG_HOST": "siem.example.org",
            "PACSGUARD_SECURITY_LOCKOUT_MAX_FAILURES": "3",
        }
    )
    assert settings.tls.require_client_cert is True
    assert settings.server.plaintext_port == 11112
    assert settings.audit.syslog.enabled
    assert settings.security.lockout.max_failures == 3


def test_env_variable_names_cover_scalar_keys() -> None:
    names = env_variables()
    assert names["PACSGUARD_SERVER_HOST"] == ("server", "host")
    assert names["PACSGUARD_AUDIT_SYSLOG_PORT"] == ("audit", "syslog", "port")
    assert names["PACSGUARD_SECURITY_ALLOW_ADDRESS_AUTH"] == ("security", "allow_address_auth")
    assert not any(name.startswith("PACSGUARD_AE") for name in names)


def test_bad_value_names_key_origin_and_what_to_set() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"PACSGUARD_SERVER_DIMSE_PORT": "70000"})
    message = str(caught.value)
    assert "server.dimse_port" in message
    assert "PACSGUARD_SERVER_DIMSE_PORT" in message
    assert "between 1 and 65535" in message
    assert isinstance(caught.value, UsageError)


@pytest.mark.parametrize(
    ("tree", "fragment"),
    [
        ({"server": {"hots": "x"}}, "did you mean server.host"),
        ({"server": {"dimse_port": "abc"}}, "expected an integer"),
        ({"tls": {"enabled": "maybe"}}, "true or false"),
        ({"tls": {"min_version": "1.1"}}, "'1.2' or '1.3'"),
        ({"profile": "open"}, "'secure' or 'lab'"),
        ({"server": {"ae_title": "A" * 17}}, "AE title"),
        ({"server": {"ae_title": "BAD\\AE"}}, "AE title"),
        ({"server": "nope"}, "expected a table"),
        ({"colour": "blue"}, "unknown setting colour"),
    ],
)
def test_invalid_scalars_are_refused(tree: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        build_settings(tree)
    assert fragment in str(caught.value)


def test_registered_aes_are_parsed() -> None:
    settings = build_settings(
        _tree(
            {
                "ae_title": "VIEWER",
                "auth": "user-password",
                "username": "alice",
                "permissions": ["echo", "find"],
            },
            {
                "ae_title": "CT1",
                "auth": "mtls",
                "cert_sha256": "AB:" * 31 + "AB",
                "address": "198.51.100.5",
                "port": 104,
                "move_destination": True,
                "permissions": ["store"],
            },
        )
    )
    viewer, ct = settings.aes
    assert viewer.auth is AuthMethod.USER_PASSWORD
    assert viewer.permissions == frozenset({Action.ECHO, Action.FIND})
    assert ct.cert_sha256 == SHA  # colons removed, lower case
    assert settings.ae("CT1 ") is ct
    assert settings.move_address("CT1") == ("198.51.100.5", 104)
    assert settings.move_address("VIEWER") is None
    assert settings.move_address("NOBODY") is None
    assert settings.user_permissions("alice") == frozenset(
        {Action.ECHO, Action.FIND, Action.MOVE, Action.GET}
    )
    assert settings.user_permissions("nobody") is None


@pytest.mark.parametrize(
    ("ae", "fragment"),
    [
        ({"ae_title": "X", "auth": "user-password"}, "needs a username"),
        ({"ae_title": "X", "auth": "user-password", "username": "bob"}, "[users.bob]"),
        ({"ae_title": "X", "auth": "mtls"}, "cert_sha256"),
        ({"ae_title": "X", "auth": "mtls", "cert_sha256": "12"}, "64 hex digits"),
        ({"ae_title": "X", "auth": "address"}, "needs the address"),
        ({"ae_title": "X", "auth": "address", "address": "pacs.local"}, "IP address"),
        ({"ae_title": "X", "auth": "lab"}, "expected one of"),
        ({"ae_title": "X", "auth": "mtls", "cert_sha256": SHA, "permissions": ["rm"]}, "rm"),
        ({"ae_title": "X", "auth": "mtls", "cert_sha256": SHA, "colour": 1}, "colour"),
        (
            {"ae_title": "X", "auth": "mtls", "cert_sha256": SHA, "move_destination": True},
            "move_destination needs",
        ),
        ({"ae_title": "X", "auth": "jwt", "username": "alice"}, "jwt.issuer"),
        (
            {"ae_title": "X", "auth": "mtls", "cert_sha256": SHA, "move_tls": True},
            "apply to a move_destination only",
        ),
        (
            {
                "ae_title": "X", "auth": "mtls", "cert_sha256": SHA, "address": "127.0.0.1",
                "port": 104, "move_destination": True, "move_ca_file": "/ca.pem",
            },
            "set move_tls = true",
        ),
    ],
)  # fmt: skip
def test_invalid_aes_are_refused(ae: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(_tree(ae))
    assert fragment in str(caught.value)


def test_duplicate_ae_titles_are_refused() -> None:
    ae = {"ae_title": "CT1", "auth": "mtls", "cert_sha256": SHA}
    with pytest.raises(ConfigError, match="registered twice"):
        build_settings(_tree(ae, ae))


def test_plain_password_instead_of_hash_is_refused() -> None:
    with pytest.raises(ConfigError, match="Argon2id hash"):
        build_settings({"users": {"bob": {"password_hash": "hunter2"}}})


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown role 'root'"):
        build_settings({"users": {"bob": {"password_hash": HASH, "roles": ["root"]}}})


def test_jwt_settings_complete(tmp_path: Path) -> None:
    ae = {"ae_title": "APP", "auth": "jwt", "username": "svc", "permissions": ["find"]}
    jwt = {"issuer": "https://idp", "audience": "pacs", "algorithm": "RS256"}
    with pytest.raises(ConfigError, match="public_key_file"):
        build_settings({"ae": [ae], "jwt": jwt})
    settings = build_settings({"ae": [ae], "jwt": {**jwt, "public_key_file": "/k.pem"}})
    assert settings.jwt.public_key_file == Path("/k.pem")


JWKS = {
    "issuer": "https://idp.test",
    "audience": "pacs",
    "jwks_url": "https://127.0.0.1:8443/jwks.json",
    "scopes": {"pacs.read": ["find", "get"], "pacs.write": ["store"]},
}


def test_jwks_settings_are_read_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "pacsguard.toml"
    config.write_text(
        '[jwt]\nissuer = "https://idp.test"\naudience = "pacs"\njwks_file = "keys/jwks.json"\n'
        'roles_claim = "roles"\n[jwt.scopes]\n"pacs.read" = ["find", "get"]\nreviewer = []\n'
    )
    settings = load_settings(config, env={"PACSGUARD_JWT_JWKS_REFRESH_S": "60"})
    jwt = settings.jwt
    assert jwt.jwks_file == tmp_path / "keys" / "jwks.json"  # relative to the file
    assert jwt.jwks_refresh_s == 60 and jwt.roles_claim == "roles" and jwt.username_claim == "sub"
    assert dict(jwt.scopes) == {"pacs.read": {Action.FIND, Action.GET}, "reviewer": set()}
    assert jwt.jwks_configured
    assert "PACSGUARD_JWT_JWKS_URL" in env_variables()
    assert "PACSGUARD_JWT_SCOPES" not in env_variables()  # a table: file only
    # The DIMSE settings still load without any of it, and the defaults are off.
    assert not build_settings({}).jwt.jwks_configured
    assert build_settings({}).jwt.scopes == {}


def test_an_ae_with_jwt_auth_needs_no_static_key_when_a_jwks_is_set() -> None:
    ae = {"ae_title": "APP", "auth": "jwt", "username": "svc", "permissions": ["find"]}
    settings = build_settings({"ae": [ae], "jwt": JWKS})
    assert settings.jwt.public_key_file is None and settings.jwt.jwks_configured
    without = {k: v for k, v in JWKS.items() if k != "jwks_url"}
    with pytest.raises(ConfigError, match=r"jwt\.secret_file: required"):
        build_settings({"ae": [ae], "jwt": without})


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"jwks_file": "/jwks.json"}, "both set"),
        ({"issuer": None}, "jwt.issuer and jwt.audience: required with jwt.jwks"),
        ({"jwks_url": "http://127.0.0.1/jwks.json"}, "expected an https:// URL"),
        ({"jwks_url": "https:///jwks.json"}, "with a host"),
        ({"jwks_url": "https://u:p@127.0.0.1/jwks.json"}, "remove the user or password"),
        ({"jwks_url": "https://127.0.0.1:99999/jwks.json"}, "port"),
        ({"jwks_url": None, "jwks_file": "/j", "jwks_ca_file": "/ca"}, "jwks_url only"),
        ({"jwks_refresh_s": 600, "jwks_max_age_s": 300}, "jwks_max_age_s = 300 is shorter"),
        ({"jwks_refresh_s": 0}, "jwt.jwks_refresh_s = 0"),
        ({"jwks_cooldown_s": 0}, "jwt.jwks_cooldown_s"),
        ({"scopes": {}}, "jwt.scopes: with a JWKS"),
        ({"scopes": {"pacs.read": ["read"]}}, "jwt.scopes.pacs.read"),
        ({"scopes": {"pacs.read": "find"}}, "expected a list of permissions"),
        ({"scopes": ["find"]}, "expected a table [jwt.scopes]"),
        ({"username_claim": ""}, "must name a claim"),
        ({"jwks_uri": "https://127.0.0.1/"}, "did you mean jwt.jwks_url"),
    ],
)
def test_bad_jwks_settings_say_what_to_set(change: dict[str, Any], fragment: str) -> None:
    jwt = {k: v for k, v in {**JWKS, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        build_settings({"jwt": jwt})
    assert fragment in str(caught.value)


# -- validate_listen ---------------------------------------------------------------------------


def _listen(**tree: Any) -> Settings:
    return build_settings(tree)


def test_loopback_is_always_fine() -> None:
    validate_listen(_listen(tls={"enabled": False}, server={"plaintext_port": 11112}))
    validate_listen(_listen(profile="lab", server={"host": "::1"}))


def test_non_loopback_without_tls_is_refused() -> None:
    settings = _listen(server={"host": "0.0.0.0"}, tls={"enabled": False})
    with pytest.raises(ConfigError, match=r"\[tls\] enabled = true"):
        validate_listen(settings)


def test_non_loopback_with_tls_and_strong_auth_is_allowed() -> None:
    ae = {"ae_title": "CT1", "auth": "mtls", "cert_sha256": SHA}
    validate_listen(_listen(server={"host": "0.0.0.0"}, ae=[ae]))


def test_non_loopback_with_address_auth_needs_explicit_consent() -> None:
    ae = {"ae_title": "OLDCT", "auth": "address", "address": "198.51.100.7"}
    settings = _listen(server={"host": "192.0.2.1"}, ae=[ae])
    with pytest.raises(ConfigError, match="allow_address_auth = true") as caught:
        validate_listen(settings)
    assert "OLDCT" in str(caught.value)
    validate_listen(
        _listen(server={"host": "192.0.2.1"}, ae=[ae], security={"allow_address_auth": True})
    )


def _destination(address: str, **extra: Any) -> dict[str, Any]:
    return {
        "ae_title": "VIEWER1", "auth": "mtls", "cert_sha256": SHA, "address": address,
        "port": 11112, "move_destination": True, **extra,
    }  # fmt: skip


def test_a_move_destination_off_this_machine_needs_tls() -> None:
    # whatever the listeners do: a loopback-only archive would still send images out
    settings = _listen(ae=[_destination("198.51.100.30")])
    with pytest.raises(ConfigError, match="move_tls = true") as caught:
        validate_listen(settings)
    assert "VIEWER1 (198.51.100.30)" in str(caught.value)
    validate_listen(_listen(ae=[_destination("198.51.100.30", move_tls=True)]))
    validate_listen(_listen(ae=[_destination("127.0.0.1")]))  # same machine: plaintext allowed


def test_move_tls_settings_and_ca(tmp_path: Path) -> None:
    ca = tmp_path / "viewer-ca.pem"
    settings = _listen(
        ae=[
            _destination("198.51.100.30", move_tls=True, move_ca_file=str(ca)),
            {**_destination("198.51.100.31", move_tls=True), "ae_title": "VIEWER2"},
        ]
    )
    own, other = settings.aes
    assert own.move_tls and own.move_ca_file == ca
    assert settings.move_ca(own) == ca
    assert settings.move_ca(other) == settings.tls.ca_file  # our CA unless told otherwise
    assert settings.move_address("VIEWER2") == ("198.51.100.31", 11112)


def test_plaintext_listener_only_on_loopback() -> None:
    settings = _listen(server={"plaintext_port": 11112, "plaintext_host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="plaintext_host"):
        validate_listen(settings)


def test_lab_profile_only_on_loopback() -> None:
    with pytest.raises(ConfigError, match='profile = "lab"'):
        validate_listen(_listen(profile="lab", server={"host": "0.0.0.0"}))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("198.51.100.1", False),
        ("pacs.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_require_files_points_at_init(tmp_path: Path) -> None:
    settings = build_settings({"storage": {"data_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="pacsguard init"):
        require_files(settings)
    no_tls = build_settings(
        {
            "storage": {"data_dir": str(tmp_path), "encrypt_at_rest": False},
            "tls": {"enabled": False},
        }
    )
    require_files(no_tls)
    moving = build_settings(
        {
            "storage": {"data_dir": str(tmp_path), "encrypt_at_rest": False},
            "tls": {"enabled": False},
            "ae": [_destination("127.0.0.1", move_tls=True, move_ca_file=str(tmp_path / "x"))],
        }
    )
    with pytest.raises(ConfigError, match="VIEWER1 move_ca_file"):
        require_files(moving)


def test_the_templates_jwt_example_loads_when_uncommented(tmp_path: Path) -> None:
    """The commented [jwt] block of the file `pacsguard init` writes is a working example."""
    from pacsguard.archive.config_template import render_config

    text = render_config(
        ae_title="PACSGUARD", admin_username="admin", admin_ae_title="ADMIN", admin_hash=HASH
    )
    lines = text.splitlines()
    start = lines.index("# [jwt]")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("# Roles grant"))
    example = []
    for line in lines[start:end]:
        body = line[2:]
        setting = line.startswith("# ") and re.match(r'(\[[\w.]+\]$|"?[\w.]+"? = )', body)
        if setting and not body.startswith(("jwks_file", "secret_file")):  # the alternatives
            example.append(body)
    config = tmp_path / "pacsguard.toml"
    config.write_text("\n".join(example) + "\n")
    jwt = load_settings(config, env={}).jwt
    assert jwt.jwks_url is not None and jwt.jwks_url.startswith("https://")
    assert jwt.jwks_ca_file == tmp_path / "tls" / "idp-ca.crt"
    assert dict(jwt.scopes) == {
        "pacs.read": {Action.FIND, Action.GET},
        "pacs.write": {Action.STORE},
    }
    assert (jwt.jwks_refresh_s, jwt.jwks_max_age_s, jwt.jwks_cooldown_s) == (300, 86400, 30)
