"""Settings values: typed coercion with errors that name the key, and the peer registry.

Private to `pacsguard.archive.config`; import from there.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from pacsguard.archive.config import (
    RegisteredAE,
    Settings,
    UserAccount,
    default_roles,
    port_range,
)
from pacsguard.archive.security.principal import AE_AUTH_METHODS, Action, AuthMethod
from pacsguard.errors import ConfigError

T = TypeVar("T")

_AE_TITLE: Final = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash
_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
#: A browser origin as CORS compares it: scheme, host, optional port; no path, no wildcard.
_ORIGIN: Final = re.compile(r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")


def how_to_set(key: str) -> str:
    """Where a user fixes `key`: the TOML table and key, and the environment variable if any."""
    parts = key.split(".")
    if len(parts) < 2 or "[" in key:
        return f"fix {key} in the config file"
    env = "PACSGUARD_" + "_".join(parts).upper()
    return f"set [{'.'.join(parts[:-1])}] {parts[-1]} in the config file (or {env})"


def field_hints(cls: type[Any]) -> dict[str, Any]:
    return get_type_hints(cls)


def reject_unknown(data: Mapping[str, Any], known: set[str] | frozenset[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(
                f"unknown setting {prefix}{key}{hint} (known: {', '.join(sorted(known))})"
            )


def build_section(
    cls: type[T], data: Mapping[str, Any], prefix: str, where: Mapping[str, str]
) -> T:
    hints = field_hints(cls)
    fields = dataclasses.fields(typing.cast(Any, cls))
    reject_unknown(data, {f.name for f in fields}, f"{prefix}.")
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name not in data:
            continue
        key = f"{prefix}.{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = data[f.name]
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a table [{key}], got {value!r}")
            kwargs[f.name] = build_section(typing.cast(type[Any], hint), value, key, where)
        else:
            kwargs[f.name] = coerce(hint, data[f.name], key, where, f.metadata)
    return cls(**kwargs)


_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}


def coerce(
    hint: Any,
    value: object,
    key: str,
    where: Mapping[str, str],
    meta: Mapping[str, Any] | None = None,
) -> object:
    """Turn a TOML value or an environment/CLI string into the declared type, or say why not."""
    origin = where.get(key)
    source = f" (from {origin})" if origin else ""

    # A value from an option of `serve` is fixed there, not in the file it overrides.
    fix = "fix that option" if origin == "command line" else how_to_set(key)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{key} = {value!r}{source}: expected {expected}; {fix}")

    if get_origin(hint) in (types.UnionType, typing.Union):
        if value is None or value == "":
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise fail("true or false")
    if hint is int or hint is float:
        if isinstance(value, bool):
            raise fail("a number")
        if not isinstance(value, int | float | str):
            raise fail("a number")
        try:
            number: float = int(value) if hint is int else float(value)
        except ValueError:
            raise fail("an integer" if hint is int else "a number") from None
        if hint is int and isinstance(value, float) and value != number:
            raise fail("an integer")
        low, high = (meta or {}).get("min"), (meta or {}).get("max")
        if (low is not None and number < low) or (high is not None and number > high):
            raise fail(f"a value between {low} and {high}")
        return number
    if hint is Path:
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise fail("a path")
        return Path(value).expanduser().absolute()
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise fail(" or ".join(repr(a) for a in allowed))
        return value
    if hint == tuple[str, ...]:
        # A TOML list of strings, or (environment, command line) one comma-separated string.
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise fail("a list of strings")
        texts = tuple(v.strip() for v in items if v.strip())
        if (meta or {}).get("check") == "origins":
            for text in texts:
                if not _ORIGIN.match(text):
                    raise fail(
                        'origins like "https://viewer.example.org" or "http://127.0.0.1:3000" '
                        "(scheme, host, optional port; no path, no wildcard)"
                    )
        return texts
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        text = value.strip()
        if (meta or {}).get("check") == "ae_title" and not _AE_TITLE.match(text):
            raise fail("an AE title of 1-16 printable characters without a backslash")
        return text
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # pragma: no cover


def _actions(value: object, key: str) -> frozenset[Action]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of permissions from {[a.value for a in Action]}")
    try:
        return frozenset(Action(v) for v in value)
    except ValueError as exc:
        raise ConfigError(
            f"{key}: {exc}; permissions are {', '.join(a.value for a in Action)}"
        ) from None


def roles_from(raw: object) -> dict[str, frozenset[Action]]:
    if not isinstance(raw, Mapping):
        raise ConfigError("roles: expected a table [roles] of name = [permissions]")
    roles = dict(default_roles())
    for name, value in raw.items():
        roles[name] = _actions(value, f"roles.{name}")
    return roles


def scopes_from(raw: object) -> types.MappingProxyType[str, frozenset[Action]]:
    """[jwt.scopes]: scope or role value -> permissions."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            'jwt.scopes: expected a table [jwt.scopes] of "scope" = [permissions], e.g. '
            '"pacs.read" = ["find", "get"]'
        )
    return types.MappingProxyType(
        {str(name): _actions(value, f"jwt.scopes.{name}") for name, value in raw.items()}
    )


def users_from(raw: object, roles: Mapping[str, frozenset[Action]]) -> dict[str, UserAccount]:
    if not isinstance(raw, Mapping):
        raise ConfigError("users: expected tables [users.NAME] with password_hash and roles")
    users: dict[str, UserAccount] = {}
    for name, body in raw.items():
        key = f"users.{name}"
        if not isinstance(body, Mapping):
            raise ConfigError(f"{key}: expected a table with password_hash and roles")
        reject_unknown(body, {"password_hash", "roles"}, f"{key}.")
        digest = body.get("password_hash")
        if digest is not None and (
            not isinstance(digest, str) or not digest.startswith("$argon2id$")
        ):
            raise ConfigError(
                f"{key}.password_hash: expected an Argon2id hash ($argon2id$...), never a "
                "plain password; set it with `pacsguard user passwd` (or `user add`)"
            )
        user_roles = body.get("roles", [])
        if not isinstance(user_roles, list) or not all(isinstance(r, str) for r in user_roles):
            raise ConfigError(f"{key}.roles: expected a list of role names")
        for role in user_roles:
            if role not in roles:
                raise ConfigError(
                    f"{key}.roles: unknown role {role!r}; define it under [roles] "
                    f"(known: {', '.join(sorted(roles))})"
                )
        users[name] = UserAccount(name, digest, tuple(user_roles))
    return users


_AE_KEYS: Final = frozenset(
    {
        "ae_title",
        "auth",
        "username",
        "cert_sha256",
        "address",
        "port",
        "permissions",
        "move_destination",
        "move_tls",
        "move_ca_file",
    }
)


def aes_from(
    raw: object, users: Mapping[str, UserAccount], where: Mapping[str, str]
) -> tuple[RegisteredAE, ...]:
    if not isinstance(raw, list):
        raise ConfigError("ae: expected an array of tables [[ae]]")
    seen: set[str] = set()
    out: list[RegisteredAE] = []
    for i, body in enumerate(raw):
        if not isinstance(body, Mapping):
            raise ConfigError(f"ae[{i}]: expected a table [[ae]]")
        out.append(_one_ae(body, f"ae[{i}]", users, where))
        if out[-1].ae_title in seen:
            raise ConfigError(f"ae[{i}].ae_title: {out[-1].ae_title!r} is registered twice")
        seen.add(out[-1].ae_title)
    return tuple(out)


def _one_ae(
    body: Mapping[str, Any], index: str, users: Mapping[str, UserAccount], where: Mapping[str, str]
) -> RegisteredAE:
    reject_unknown(body, set(_AE_KEYS), f"{index}.")
    title = str(
        coerce(str, body.get("ae_title"), f"{index}.ae_title", where, {"check": "ae_title"})
    )
    key = f"{index} ({title})"
    methods = [m.value for m in AE_AUTH_METHODS]
    try:
        auth = AuthMethod(str(body.get("auth")))
    except ValueError:
        auth = AuthMethod.LAB
    if auth not in AE_AUTH_METHODS:
        raise ConfigError(f"{key}.auth: expected one of {', '.join(methods)}")
    username = body.get("username")
    if username is not None and not isinstance(username, str):
        raise ConfigError(f"{key}.username: expected a string")
    if auth in (AuthMethod.USER_PASSWORD, AuthMethod.JWT) and not username:
        raise ConfigError(
            f"{key}.username: auth = {auth.value!r} needs a username, the user under [users] "
            "it logs in as (`pacsguard ae add --username NAME`)"
        )
    if auth is AuthMethod.USER_PASSWORD:
        user = users.get(str(username))
        if user is None or user.password_hash is None:
            raise ConfigError(
                f"{key}.username: user {username!r} needs [users.{username}] with a "
                "password_hash for auth = 'user-password'"
            )
    cert = body.get("cert_sha256")
    if cert is not None:
        cert = str(cert).replace(":", "").lower()
        if not _SHA256_HEX.match(cert):
            raise ConfigError(f"{key}.cert_sha256: expected 64 hex digits (SHA-256 of the DER)")
    if auth is AuthMethod.MTLS and cert is None:
        raise ConfigError(
            f"{key}.cert_sha256: auth = 'mtls' needs the client certificate's "
            "SHA-256 (printed by `pacsguard cert issue --client NAME`)"
        )
    address = body.get("address")
    if address is not None:
        try:
            ipaddress.ip_network(str(address), strict=False)
        except ValueError:
            raise ConfigError(
                f"{key}.address: expected an IP address or network, got {address!r}"
            ) from None
        address = str(address)
    if auth is AuthMethod.ADDRESS and address is None:
        raise ConfigError(f"{key}.address: auth = 'address' needs the address it is bound to")
    port = body.get("port")
    if port is not None:
        port = int(str(coerce(int, port, f"{index}.port", where, port_range())))
    move_destination = bool(
        coerce(bool, body.get("move_destination", False), f"{index}.move_destination", where)
    )
    if move_destination and (port is None or address is None or "/" in str(address)):
        raise ConfigError(
            f"{key}: a move_destination needs a single host address and a port to send to"
        )
    move_tls = bool(coerce(bool, body.get("move_tls", False), f"{index}.move_tls", where))
    raw_ca = body.get("move_ca_file")
    move_ca_file = (
        None if raw_ca is None else Path(str(coerce(Path, raw_ca, f"{index}.move_ca_file", where)))
    )
    if (move_tls or move_ca_file is not None) and not move_destination:
        raise ConfigError(f"{key}: move_tls and move_ca_file apply to a move_destination only")
    if move_ca_file is not None and not move_tls:
        raise ConfigError(f"{key}.move_ca_file: set move_tls = true to use it")
    return RegisteredAE(
        ae_title=title,
        auth=auth,
        permissions=_actions(body.get("permissions", []), f"{key}.permissions"),
        username=username,
        cert_sha256=cert,
        address=address,
        port=port,
        move_destination=move_destination,
        move_tls=move_tls,
        move_ca_file=move_ca_file,
    )


def check_jwt(settings: Settings) -> None:
    jwt = settings.jwt
    if jwt.jwks_configured:
        _check_jwks(settings)
    if not any(ae.auth is AuthMethod.JWT for ae in settings.aes):
        return
    if not jwt.issuer or not jwt.audience:
        raise ConfigError("jwt.issuer and jwt.audience: required when an AE uses auth = 'jwt'")
    if jwt.jwks_configured:
        return  # type 5 tokens are verified against the JWKS too: no static key needed
    if jwt.algorithm == "HS256" and jwt.secret_file is None:
        raise ConfigError("jwt.secret_file: required for algorithm = 'HS256'")
    if jwt.algorithm == "RS256" and jwt.public_key_file is None:
        raise ConfigError("jwt.public_key_file: required for algorithm = 'RS256'")


def _check_jwks(settings: Settings) -> None:
    """The JWKS settings of HTTP bearer JWTs (only called when jwks_file or jwks_url is set)."""
    jwt = settings.jwt
    if jwt.jwks_file is not None and jwt.jwks_url is not None:
        raise ConfigError(
            "jwt.jwks_file and jwt.jwks_url are both set; keep one: the issuer's key set "
            "comes from a file or from its URL"
        )
    if not jwt.issuer or not jwt.audience:
        raise ConfigError(
            "jwt.issuer and jwt.audience: required with jwt.jwks_file or jwt.jwks_url "
            "(a token is accepted only from that issuer, for this audience)"
        )
    if jwt.jwks_url is not None:
        check_jwks_url(jwt.jwks_url)
    elif jwt.jwks_ca_file is not None:
        raise ConfigError("jwt.jwks_ca_file: applies to jwt.jwks_url only; set it or remove this")
    if jwt.jwks_max_age_s < jwt.jwks_refresh_s:
        raise ConfigError(
            f"jwt.jwks_max_age_s = {jwt.jwks_max_age_s:g} is shorter than jwt.jwks_refresh_s = "
            f"{jwt.jwks_refresh_s:g}; cached keys must outlive one refresh interval"
        )
    if not jwt.username_claim or not jwt.roles_claim:
        raise ConfigError("jwt.username_claim and jwt.roles_claim: must name a claim")
    if not jwt.scopes:
        raise ConfigError(
            "jwt.scopes: with a JWKS, map the issuer's scopes or roles to permissions, e.g. "
            '[jwt.scopes] "pacs.read" = ["find", "get"]; a token grants nothing else'
        )


def check_jwks_url(url: str) -> None:
    """An https:// URL with a host and no credentials in it, or ConfigError."""
    parts = urlsplit(url)
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"jwt.jwks_url = {url!r}: the port is not a number 1-65535") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(
            f"jwt.jwks_url = {url!r}: expected an https:// URL with a host (the issuer's keys "
            "are never fetched without TLS)"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"jwt.jwks_url: remove the user or password from the URL ({parts.hostname}); the "
            "JWKS is public and fetched without credentials"
        )
