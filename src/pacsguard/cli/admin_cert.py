"""`pacsguard cert issue`: certificates for peers, from the archive's local CA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pacsguard.archive.config import DataLayout
from pacsguard.archive.security.bootstrap import (
    LocalCA,
    issue_client_certificate,
    issue_server_certificate,
)
from pacsguard.cli.admin_user import DataDir
from pacsguard.errors import UsageError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # "[users.NAME]" and "[[ae]]" are text, not markup
    help="Certificates for peers from the archive's CA; prints the SHA-256 to register.",
)


@app.command()
def issue(
    client: Annotated[
        str | None, typer.Option("--client", help="A client certificate for this name.")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="A server (and client) certificate for this name."),
    ] = None,
    address: Annotated[
        list[str] | None,
        typer.Option(help="--server: IP address or DNS name it is reached by (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for NAME.crt and NAME.key (default DATA_DIR/peers).")
    ] = None,
    data_dir: DataDir = Path("pacsguard-data"),
) -> None:
    """Issue a certificate and key from the CA and print its SHA-256 (for cert_sha256)."""
    if (client is None) == (server is None):
        raise UsageError("give exactly one of --client NAME and --server NAME")
    layout = DataLayout(data_dir.absolute())
    if not layout.ca_key.exists():
        raise UsageError(f"no CA key at {layout.ca_key}; run `pacsguard init` first")
    ca = LocalCA.load(layout.ca_cert, layout.ca_key)
    folder = out or layout.data_dir / "peers"
    if client is not None:
        if address:
            raise UsageError("--address applies to --server certificates")
        cert, key, digest = issue_client_certificate(ca, client, folder)
    else:
        assert server is not None
        if not address:
            raise UsageError("--server needs --address: the IP address or DNS name we reach it by")
        cert, key, digest = issue_server_certificate(ca, server, folder, address)
    typer.echo(f"certificate: {cert}\nprivate key: {key} (mode 0600; give it to the peer only)")
    typer.echo(f"sha256: {digest}")
    typer.echo(
        f"register it: pacsguard ae add AE_TITLE --auth mtls --cert-sha256 {digest} "
        "--permission echo ..."
    )
