"""`pacsguard token issue|revoke|list`: API tokens for the DICOMweb front end (see
archive.tokens)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from pacsguard.archive import tokens
from pacsguard.archive.config import load_settings
from pacsguard.cli.admin_user import Config, DataDir, config_path
from pacsguard.errors import ConfigError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # "[users.NAME]" and "[[ae]]" are text, not markup
    help="API tokens (hash stored) for DICOMweb: Authorization: Bearer <token>.",
)

_USE = (
    "use it as  Authorization: Bearer <token>  on the archive's DICOMweb ([dicomweb] enabled, "
    "or serve --web-port)"
)


def _store(data_dir: Path, config: Path | None) -> Path:
    """The file the archive run with this config reads: its storage.data_dir, which --config
    may put elsewhere than --data-dir. A folder with no config is an error, not an empty list."""
    return tokens.store_path(load_settings(config_path(data_dir, config)))


@app.command()
def issue(
    user: Annotated[str, typer.Option(help="The user ([users.NAME]) the token acts as.")],
    days: Annotated[int, typer.Option(help="Days until it expires.")] = 90,
    data_dir: DataDir = Path("pacsguard-data"),
    config: Config = None,
) -> None:
    """Issue a token for a user; it is printed once, only its SHA-256 is kept."""
    settings = load_settings(config_path(data_dir, config))
    if user not in settings.users:
        raise ConfigError(f"users.{user} does not exist (see `pacsguard user list`)")
    record, token = tokens.issue(tokens.store_path(settings), user, days=days)
    typer.echo(
        f"token {record.id} for {user!r}, expires {record.expires}; shown now and never "
        f"again:\n\n    {token}\n\n{_USE}"
    )


@app.command()
def revoke(
    token_id: str, data_dir: DataDir = Path("pacsguard-data"), config: Config = None
) -> None:
    """Revoke a token by its id."""
    record = tokens.revoke(_store(data_dir, config), token_id)
    typer.echo(f"token {record.id} of {record.username!r} revoked")


@app.command("list")
def list_(data_dir: DataDir = Path("pacsguard-data"), config: Config = None) -> None:
    """List tokens: id, user, expiry, state (never the token or its hash)."""
    now = datetime.now(UTC)
    for record in tokens.load(_store(data_dir, config)):
        typer.echo(f"{record.id}\t{record.username}\texpires {record.expires}\t{record.state(now)}")
