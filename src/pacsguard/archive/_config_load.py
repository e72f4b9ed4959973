"""Settings sources: defaults -> TOML file -> PACSGUARD_* environment -> CLI overrides.

Private to `pacsguard.archive.config`; import from there.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from pacsguard.archive._config_parse import (
    aes_from,
    build_section,
    check_jwt,
    coerce,
    field_hints,
    reject_unknown,
    roles_from,
    scopes_from,
    users_from,
)
from pacsguard.archive.config import (
    CONFIG_ENV,
    DEFAULT_DATA_DIR,
    ENV_PREFIX,
    AuditSettings,
    DataLayout,
    DicomWebSettings,
    JwtSettings,
    Profile,
    SecuritySettings,
    ServerSettings,
    Settings,
    StorageSettings,
    TlsSettings,
)
from pacsguard.errors import ConfigError

_SECTIONS: Final[dict[str, type[Any]]] = {
    "server": ServerSettings,
    "tls": TlsSettings,
    "storage": StorageSettings,
    "audit": AuditSettings,
    "security": SecuritySettings,
    "jwt": JwtSettings,
    "dicomweb": DicomWebSettings,
}
_TOP_LEVEL: Final = {"profile", "ae", "users", "roles", *_SECTIONS}

#: Keys whose default follows storage.data_dir when not set.
_DERIVED: Final[dict[tuple[str, str], Callable[[DataLayout], object]]] = {
    ("tls", "cert_file"): lambda lay: lay.server_cert,
    ("tls", "key_file"): lambda lay: lay.server_key,
    ("tls", "ca_file"): lambda lay: lay.ca_cert,
    ("storage", "index_url"): lambda lay: lay.index_url,
    ("storage", "blob_dir"): lambda lay: lay.blob_dir,
    ("storage", "key_file"): lambda lay: lay.at_rest_key,
    ("audit", "log_path"): lambda lay: lay.audit_log,
}

Tree = dict[str, Any]


def _scalar_paths(cls: type[Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            paths.extend(_scalar_paths(typing.cast(type[Any], hint), (*prefix, f.name)))
        elif f.metadata.get("table"):
            continue  # a table of the file only, such as [jwt.scopes]
        else:
            paths.append((*prefix, f.name))
    return paths


def env_variables() -> dict[str, tuple[str, ...]]:
    """Every supported ``PACSGUARD_*`` variable and the key it sets."""
    names: dict[str, tuple[str, ...]] = {f"{ENV_PREFIX}PROFILE": ("profile",)}
    for section, cls in _SECTIONS.items():
        for path in _scalar_paths(cls, (section,)):
            names[ENV_PREFIX + "_".join(path).upper()] = path
    return names


def _dotted(path: tuple[str, ...] | list[str]) -> str:
    return ".".join(path)


def _set(tree: Tree, path: tuple[str, ...], value: object) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{_dotted(path)}: {part!r} is a value, not a table")
        node = child
    node[path[-1]] = value


def _merge(
    base: Tree,
    update: Mapping[str, Any],
    origins: dict[str, str],
    origin: str,
    prefix: tuple[str, ...] = (),
) -> None:
    for key, value in update.items():
        path = (*prefix, key)
        child = base.get(key)
        if isinstance(value, Mapping) and isinstance(child, dict):
            _merge(child, value, origins, origin, path)
            continue
        base[key] = dict(value) if isinstance(value, Mapping) else value
        origins[_dotted(path)] = origin
        if isinstance(value, Mapping | list):
            _note_origins(value, path, origins, origin)


def _note_origins(
    value: object, path: tuple[str, ...], origins: dict[str, str], origin: str
) -> None:
    items = (
        value.items()
        if isinstance(value, Mapping)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        sub = (*path[:-1], f"{path[-1]}[{key}]") if isinstance(key, int) else (*path, key)
        origins[_dotted(sub)] = origin
        _note_origins(child, sub, origins, origin)


_FILE_PATH_KEYS: Final = (
    ("tls", "cert_file"),
    ("tls", "key_file"),
    ("tls", "ca_file"),
    ("storage", "data_dir"),
    ("storage", "blob_dir"),
    ("storage", "key_file"),
    ("audit", "log_path"),
    ("audit", "syslog", "ca_file"),
    ("jwt", "secret_file"),
    ("jwt", "public_key_file"),
    ("jwt", "jwks_file"),
    ("jwt", "jwks_ca_file"),
)


def missing_config(path: Path) -> str:
    """Why a config file cannot be read, and the `init` that makes one in that folder (a bare
    `pacsguard init` would make ./pacsguard-data, not the folder the user named)."""
    return (
        f"config file {path} does not exist (is --data-dir or --config right?); "
        f"`pacsguard init --data-dir {path.parent}` creates {path.parent / 'pacsguard.toml'}"
    )


def _read_file(path: Path) -> Tree:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(missing_config(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Relative paths in the file are relative to the file's own folder.
    base = path.parent
    for key in _FILE_PATH_KEYS:
        node: Any = data
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key[-1]), str):
            node[key[-1]] = str(base / node[key[-1]])
    return data


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Defaults -> TOML file (`path`, or ``$PACSGUARD_CONFIG``) -> ``PACSGUARD_*`` -> overrides.

    `overrides` maps dotted keys to values, e.g. ``{"server.host": "0.0.0.0"}``; None values are
    ignored (a CLI option the user did not give).
    """
    environ = os.environ if env is None else env
    tree: Tree = {}
    origins: dict[str, str] = {}
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    if path is not None:
        _merge(tree, _read_file(path), origins, f"file {path}")
    for name, key in env_variables().items():
        if name in environ:
            _set(tree, key, environ[name])
            origins[_dotted(key)] = f"environment {name}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(tree, tuple(dotted.split(".")), value)
            origins[dotted] = "command line"
    return build_settings(tree, origins)


def build_settings(tree: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> Settings:
    """Validate a nested mapping (as a TOML file would hold it) into `Settings`."""
    where = dict(origins or {})
    reject_unknown(tree, _TOP_LEVEL, "")
    sections: dict[str, Any] = {}
    raw_storage = _table(tree, "storage")
    data_dir = Path(
        str(coerce(Path, raw_storage.get("data_dir", DEFAULT_DATA_DIR), "storage.data_dir", where))
    ).absolute()
    layout = DataLayout(data_dir)
    for name, cls in _SECTIONS.items():
        raw = dict(_table(tree, name))
        if name == "storage":
            raw["data_dir"] = data_dir
        for (section, key), derive in _DERIVED.items():
            if section == name and key not in raw:
                raw[key] = derive(layout)
        tables = {
            f.name: raw.pop(f.name)
            for f in dataclasses.fields(cls)
            if f.metadata.get("table") and f.name in raw
        }
        section = build_section(cls, raw, name, where)
        if "scopes" in tables:  # [jwt.scopes], the one such table
            section = dataclasses.replace(section, scopes=scopes_from(tables["scopes"]))
        sections[name] = section
    roles = roles_from(tree.get("roles", {}))
    users = users_from(tree.get("users", {}), roles)
    aes = aes_from(tree.get("ae", []), users, where)
    profile = coerce(Profile, tree.get("profile", "secure"), "profile", where)
    settings = Settings(
        profile=typing.cast(Profile, profile),
        aes=aes,
        users=types.MappingProxyType(users),
        roles=types.MappingProxyType(roles),
        **sections,
    )
    check_jwt(settings)
    return settings


def _table(tree: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = tree.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table [{key}], got {value!r}")
    return value
