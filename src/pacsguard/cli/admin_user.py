"""`pacsguard user add|passwd|remove|list`: accounts in pacsguard.toml, Argon2id hashes only.

Passwords come from a prompt (asked twice, not echoed) or, with --password-stdin, from the
first line of standard input; never from the command line, where `ps` and shell history would
keep them. `--generate` makes a random one and prints it once.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from pacsguard.archive import admin
from pacsguard.archive.config import DataLayout, load_settings
from pacsguard.archive.security.bootstrap import new_secret
from pacsguard.errors import UsageError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # "[users.NAME]" and "[[ae]]" are text, not markup
    help="Users (Argon2id hashes in pacsguard.toml); `pacsguard reload` applies changes.",
)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Data folder (pacsguard.toml).")]
Config = Annotated[
    Path | None, typer.Option(help="Config file (default: DATA_DIR/pacsguard.toml).")
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]


def config_path(data_dir: Path, config: Path | None) -> Path:
    return config or DataLayout(data_dir.absolute()).config_file


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or asked twice at a prompt that does not echo."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("--password-stdin: standard input held no password")
        return password
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise UsageError("the passwords differ; nothing was changed")
    return first


def _password(from_stdin: bool, generate: bool) -> tuple[str, bool]:
    if generate and from_stdin:
        raise UsageError("--generate and --password-stdin exclude each other")
    return (new_secret(), True) if generate else (read_password(from_stdin), False)


def _exists(path: Path, username: str) -> bool:
    return username in load_settings(path).users


def _shown_once(username: str, secret: str) -> None:
    typer.echo(f"password of {username!r}, shown now and never again:\n\n    {secret}\n")


@app.command()
def add(
    username: str,
    role: Annotated[
        list[str] | None, typer.Option("--role", help="A role from [roles] (repeatable).")
    ] = None,
    password_stdin: PasswordStdin = False,
    generate: Annotated[bool, typer.Option(help="Generate the password; print it once.")] = False,
    data_dir: DataDir = Path("pacsguard-data"),
    config: Config = None,
) -> None:
    """Add a user with a password (Argon2id hash stored) and roles."""
    path = config_path(data_dir, config)
    if _exists(path, username):  # say so before asking for a password
        raise UsageError(f"users.{username} exists; use `pacsguard user passwd` to change it")
    password, generated = _password(password_stdin, generate)
    with admin.editing(path) as document:
        admin.add_user(document, username, password, role or [])
    typer.echo(f"user {username!r} added to {path}; run `pacsguard reload` to apply")
    if not role:  # permissions come from roles only: a user without one is refused everything
        known = ", ".join(load_settings(path).roles)
        typer.echo(
            f"note: {username!r} has no role, so it may do nothing: list some in roles under "
            f"[users.{username}] (defined: {known}), then run `pacsguard reload`",
            err=True,
        )
    if generated:
        _shown_once(username, password)


@app.command()
def passwd(
    username: str,
    password_stdin: PasswordStdin = False,
    generate: Annotated[bool, typer.Option(help="Generate the password; print it once.")] = False,
    data_dir: DataDir = Path("pacsguard-data"),
    config: Config = None,
) -> None:
    """Change a user's password."""
    path = config_path(data_dir, config)
    if not _exists(path, username):
        raise UsageError(f"users.{username} does not exist (see `pacsguard user list`)")
    password, generated = _password(password_stdin, generate)
    with admin.editing(path) as document:
        admin.set_password(document, username, password)
    typer.echo(f"password of {username!r} changed in {path}; run `pacsguard reload` to apply")
    if generated:
        _shown_once(username, password)


@app.command()
def remove(
    username: str, data_dir: DataDir = Path("pacsguard-data"), config: Config = None
) -> None:
    """Remove a user (refused while a registered AE names it)."""
    path = config_path(data_dir, config)
    with admin.editing(path) as document:
        admin.remove_user(document, username)
    typer.echo(f"user {username!r} removed from {path}; run `pacsguard reload` to apply")


@app.command("list")
def list_(data_dir: DataDir = Path("pacsguard-data"), config: Config = None) -> None:
    """List users and their roles (never their hashes)."""
    for user in load_settings(config_path(data_dir, config)).users.values():
        state = "" if user.password_hash else "  (no password: cannot log in)"
        typer.echo(f"{user.username}\troles: {', '.join(user.roles) or '-'}{state}")
