"""`pacsguard init`: first run of the archive — CA, server certificate, admin secret, config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pacsguard.archive.security.bootstrap import InitResult, initialize

#: What losing the at-rest key costs (said when `init` or a first `serve` makes it).
KEY_LOST = "without it the blobs, the index and the audit log's Patient IDs cannot be read"


def init(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Folder for keys, certificates, config and data.")
    ] = Path("pacsguard-data"),
    ae_title: Annotated[str, typer.Option(help="The archive's own AE title.")] = "PACSGUARD",
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san", help="Extra host name or IP for the server certificate (repeatable)."
        ),
    ] = None,
    admin: Annotated[str, typer.Option(help="User name of the administrator.")] = "admin",
) -> None:
    """Create what is missing in DATA_DIR; never overwrite a key, certificate or config."""
    result = initialize(data_dir, ae_title=ae_title, extra_sans=san or (), admin_username=admin)
    show_initialized(result, ae_title, san)


def show_initialized(
    result: InitResult, ae_title: str, san: list[str] | None = None, port: int = 2762
) -> None:
    """What `init` (or a first `serve`) made, the admin secret once, and how to use it."""
    layout = result.layout
    for path in result.created:
        typer.echo(f"created  {path}")
    for path in result.kept:
        typer.echo(f"kept     {path}")
    typer.echo("")
    typer.echo(f"config:       {layout.config_file}")
    typer.echo(f"CA for peers: {layout.ca_cert}  (clients verify the archive with it)")
    typer.echo(f"audit log:    {layout.audit_log}")
    if layout.at_rest_key in result.created:
        typer.echo(f"Back up {layout.at_rest_key} apart from the data: {KEY_LOST}.")
    if result.admin_secret is None:
        typer.echo("admin: already set up; its secret was shown when it was created.")
        if san:
            typer.echo("note: the server certificate exists; remove it and its key to add names.")
        return
    typer.echo("")
    typer.echo(
        f"Administrator user {result.admin_username!r}, calling AE {result.admin_ae_title!r}."
    )
    typer.echo("Its secret is shown now and never again (only an Argon2id hash is stored):")
    typer.echo("")
    typer.echo(f"    {result.admin_secret}")
    typer.echo("")
    typer.echo(
        "Send it as a PS3.7 user identity (type 2: username + passcode), "
        "e.g. with dcmtk's storescu:"
    )
    typer.echo(
        f"    storescu +tla --add-cert-file {layout.ca_cert} -aet {result.admin_ae_title} "
        f"-aec {ae_title} --user {result.admin_username} --password '<secret>' "
        f"localhost {port} FILE.dcm"
    )
    typer.echo(
        "dcmtk's echoscu, findscu, getscu and movescu send no user identity: register them by "
        "certificate (`pacsguard cert issue --client NAME`, then `pacsguard ae add AE_TITLE "
        "--auth mtls --cert-sha256 ...`) and connect with +tls NAME.key NAME.crt."
    )
    typer.echo(
        'A refused association looks the same to every peer (A-ASSOCIATE-RJ 1/1/1, "No '
        f'Reason"); the audit log says why: tail -n 3 {layout.audit_log}'
    )
