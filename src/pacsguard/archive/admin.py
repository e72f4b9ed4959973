"""Operator edits of pacsguard.toml: users and registered AEs, keeping comments and layout.

The file is read and changed with tomlkit (a style-preserving TOML library), so the comments
`pacsguard init` wrote, and the operator's own, survive every edit. Each edit is validated with
the real loader (`load_settings`, then `validate_listen`) on the exact text about to be written;
an invalid result is refused with the loader's error, which names the key, and the file is left
untouched. A valid result replaces the file atomically (temp file in the same folder, fsync,
rename), mode 0600. Passwords are hashed here exactly as `pacsguard init` hashes the admin
secret (Argon2id); the secret itself is never stored or returned.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Table
from tomlkit.toml_document import TOMLDocument

from pacsguard.archive._config_load import missing_config
from pacsguard.archive.config import Settings, load_settings, validate_listen
from pacsguard.archive.security.bootstrap import hash_secret
from pacsguard.archive.security.principal import Action, AuthMethod
from pacsguard.errors import ConfigError

T = TypeVar("T")

USERNAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD: Final = 12


@dataclass(frozen=True, slots=True)
class AeSpec:
    """What `pacsguard ae add` registers; None/False fields are left out of the file."""

    ae_title: str
    auth: AuthMethod
    permissions: tuple[Action, ...] = ()
    username: str | None = None
    cert_sha256: str | None = None
    address: str | None = None
    port: int | None = None
    move_destination: bool = False
    move_tls: bool = False
    move_ca_file: str | None = None


def read_document(path: Path) -> TOMLDocument:
    """The config file as an editable document; ConfigError when missing or not TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(missing_config(path)) from None
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` (its inode survives the renames that
    replace files inside it), so that two operators' edits never lose one another."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def editing(path: Path) -> Iterator[TOMLDocument]:
    """Read, change (in the `with` body) and save the config file under the folder lock.
    Nothing is written when the body or the validation raises."""
    with folder_lock(path.absolute().parent):
        document = read_document(path)
        yield document
        save_document(path, document)


def save_document(path: Path, document: TOMLDocument) -> Settings:
    """Validate `document` with the real loader, then replace `path` with it atomically.

    Returns the settings the new file gives. On ConfigError the file is unchanged."""

    def check(candidate: Path) -> Settings:
        # The loader resolves relative paths against the file's folder: the candidate is in
        # the same folder, so it sees exactly what the renamed file will say.
        try:
            settings = load_settings(candidate)  # with the environment, as `serve` will see it
        except ConfigError as exc:  # name the file the user knows, not the temporary copy
            raise ConfigError(str(exc).replace(str(candidate), str(path))) from None
        validate_listen(settings)
        return settings

    return replace_file(path, tomlkit.dumps(document).encode("utf-8"), check)


def replace_file(path: Path, data: bytes, check: Callable[[Path], T]) -> T:
    """Write `data` to a 0600 temp file next to `path`, fsync it, run `check` on it, and
    only if that returns rename it over `path` (and fsync the folder). Returns what `check`
    returned; when it raises, the temp file is removed and `path` is untouched."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        result = check(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself is durable
    finally:
        os.close(directory)
    return result


# -- users -----------------------------------------------------------------------------------


def _users(document: TOMLDocument) -> Table:
    users = document.get("users")
    if users is None:
        users = tomlkit.table(is_super_table=True)
        document["users"] = users
    if not isinstance(users, Table):
        raise ConfigError("users: expected tables [users.NAME] with password_hash and roles")
    return users


def check_password(password: str) -> None:
    """Refuse a password too short to resist guessing (the generated ones have 32 characters)."""
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"the password must have at least {MIN_PASSWORD} characters")


def add_user(document: TOMLDocument, username: str, password: str, roles: Sequence[str]) -> None:
    """Add [users.NAME] with an Argon2id hash of `password` and `roles`."""
    if not USERNAME.match(username):
        raise ConfigError(f"username {username!r}: use 1-64 letters, digits, _ . -")
    users = _users(document)
    if username in users:
        raise ConfigError(f"users.{username} exists; use `pacsguard user passwd` to change it")
    check_password(password)
    body = tomlkit.table()
    body["password_hash"] = hash_secret(password)
    body["roles"] = list(roles)
    users[username] = body


def set_password(document: TOMLDocument, username: str, password: str) -> None:
    """Replace the user's Argon2id hash."""
    users = _users(document)
    body = users.get(username)
    if not isinstance(body, Table):
        raise ConfigError(f"users.{username} does not exist (see `pacsguard user list`)")
    check_password(password)
    body["password_hash"] = hash_secret(password)


def remove_user(document: TOMLDocument, username: str) -> None:
    """Remove [users.NAME]; refused while an [[ae]] still names the user."""
    users = _users(document)
    if username not in users:
        raise ConfigError(f"users.{username} does not exist (see `pacsguard user list`)")
    holders = [str(ae.get("ae_title")) for ae in _aes(document) if ae.get("username") == username]
    if holders:
        raise ConfigError(
            f"users.{username} is the user of AE(s) {', '.join(holders)}; remove them first "
            "(`pacsguard ae remove TITLE`)"
        )
    del users[username]


# -- registered AEs --------------------------------------------------------------------------


def _aes(document: TOMLDocument) -> list[Any]:
    aes = document.get("ae")
    if aes is None:
        return []
    if not isinstance(aes, AoT | list):
        raise ConfigError("ae: expected an array of tables [[ae]]")
    return list(aes)


def add_ae(document: TOMLDocument, spec: AeSpec) -> None:
    """Append an [[ae]] table for `spec` (the loader checks it when the file is saved)."""
    title = spec.ae_title.strip()
    if any(str(ae.get("ae_title", "")).strip() == title for ae in _aes(document)):
        raise ConfigError(f"ae {title!r} is registered already; remove it first to change it")
    body = tomlkit.table()
    body["ae_title"] = title
    body["auth"] = spec.auth.value
    optional: dict[str, object] = {
        "username": spec.username,
        "cert_sha256": spec.cert_sha256,
        "address": spec.address,
        "port": spec.port,
    }
    for key, value in optional.items():
        if value is not None:
            body[key] = value
    body["permissions"] = [a.value for a in spec.permissions]
    if spec.move_destination:
        body["move_destination"] = True
    if spec.move_tls:
        body["move_tls"] = True
    if spec.move_ca_file is not None:
        body["move_ca_file"] = spec.move_ca_file
    aes = document.get("ae")
    if aes is None:
        document.append("ae", tomlkit.aot())
        aes = document["ae"]
    aes.append(body)


def remove_ae(document: TOMLDocument, ae_title: str) -> None:
    """Remove the [[ae]] table whose title is `ae_title`."""
    wanted = ae_title.strip()
    for i, ae in enumerate(_aes(document)):
        if str(ae.get("ae_title", "")).strip() == wanted:
            del document["ae"][i]
            return
    raise ConfigError(f"ae {wanted!r} is not registered (see `pacsguard ae list`)")
