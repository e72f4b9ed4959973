"""`pacsguard ae add|remove|list`: the registered peers ([[ae]]) in pacsguard.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pacsguard.archive import admin
from pacsguard.archive.config import load_settings
from pacsguard.archive.security.principal import AE_AUTH_METHODS, Action, AuthMethod
from pacsguard.cli.admin_user import Config, DataDir, config_path
from pacsguard.errors import UsageError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # "[users.NAME]" and "[[ae]]" are text, not markup
    help="Registered peers ([[ae]] in pacsguard.toml); `pacsguard reload` applies changes.",
)

_AUTH = [m.value for m in AE_AUTH_METHODS]
_PERMISSIONS = [a.value for a in Action]


def _auth(value: str) -> AuthMethod:
    if value not in _AUTH:
        raise UsageError(f"--auth {value!r}: expected one of {', '.join(_AUTH)}")
    return AuthMethod(value)


def _permissions(values: list[str]) -> tuple[Action, ...]:
    wanted: list[Action] = []
    for value in values:
        for part in value.split(","):
            if part.strip() not in _PERMISSIONS:
                raise UsageError(
                    f"--permission {part.strip()!r}: expected {', '.join(_PERMISSIONS)}"
                )
            wanted.append(Action(part.strip()))
    return tuple(dict.fromkeys(wanted))


@app.command()
def add(
    ae_title: str,
    auth: Annotated[str, typer.Option(help=f"How it proves itself: {', '.join(_AUTH)}.")],
    permission: Annotated[
        list[str] | None,
        typer.Option(help=f"Repeatable or comma-separated: {', '.join(_PERMISSIONS)}."),
    ] = None,
    username: Annotated[
        str | None, typer.Option(help="Its user (user-password, jwt): [users.NAME].")
    ] = None,
    cert_sha256: Annotated[
        str | None, typer.Option(help="SHA-256 of its client certificate (mtls).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="IP address or network it must connect from.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port it listens on (move destination).")] = None,
    move_destination: Annotated[
        bool, typer.Option(help="C-MOVE may send to it (needs --address and --port).")
    ] = False,
    move_tls: Annotated[bool, typer.Option(help="Send C-MOVE results to it over TLS.")] = False,
    move_ca_file: Annotated[
        str | None, typer.Option(help="CA its certificate chains to (default tls.ca_file).")
    ] = None,
    data_dir: DataDir = Path("pacsguard-data"),
    config: Config = None,
) -> None:
    """Register a peer AE: how it authenticates, from where, what it may do."""
    spec = admin.AeSpec(
        ae_title=ae_title,
        auth=_auth(auth),
        permissions=_permissions(permission or []),
        username=username,
        cert_sha256=cert_sha256,
        address=address,
        port=port,
        move_destination=move_destination,
        move_tls=move_tls,
        move_ca_file=move_ca_file,
    )
    path = config_path(data_dir, config)
    with admin.editing(path) as document:
        admin.add_ae(document, spec)
    typer.echo(f"ae {spec.ae_title!r} registered in {path}; run `pacsguard reload` to apply")
    if not spec.permissions and not spec.move_destination:
        typer.echo(
            f"note: {spec.ae_title!r} has no permission, so it may do nothing: "
            "set permissions in its [[ae]] entry (echo, store, find, move, get), then run "
            "`pacsguard reload`",
            err=True,
        )
    if spec.auth is AuthMethod.ADDRESS and not load_settings(path).security.allow_address_auth:
        typer.echo(
            f"note: [security] allow_address_auth = false: {spec.ae_title!r} is rejected "
            "until it is set to true",
            err=True,
        )


@app.command()
def remove(
    ae_title: str, data_dir: DataDir = Path("pacsguard-data"), config: Config = None
) -> None:
    """Remove a registered peer AE."""
    path = config_path(data_dir, config)
    with admin.editing(path) as document:
        admin.remove_ae(document, ae_title)
    typer.echo(f"ae {ae_title.strip()!r} removed from {path}; run `pacsguard reload` to apply")


@app.command("list")
def list_(data_dir: DataDir = Path("pacsguard-data"), config: Config = None) -> None:
    """List registered peers, as the archive reads them."""
    settings = load_settings(config_path(data_dir, config))
    for ae in settings.aes:
        parts = [ae.ae_title, f"auth={ae.auth.value}"]
        if ae.username:
            parts.append(f"user={ae.username}")
        if ae.cert_sha256:
            parts.append(f"cert_sha256={ae.cert_sha256}")
        if ae.address:
            parts.append(f"address={ae.address}")
        if ae.port is not None:
            parts.append(f"port={ae.port}")
        if ae.move_destination:
            parts.append("move-destination" + (" (tls)" if ae.move_tls else ""))
        parts.append("permissions=" + (",".join(sorted(a.value for a in ae.permissions)) or "none"))
        typer.echo("\t".join(parts))
