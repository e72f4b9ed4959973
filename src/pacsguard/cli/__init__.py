"""The `pacsguard` command line. One module per subcommand; `main(argv)` is the entry point.

Subcommands are imported when they run (or show their own help), never at start-up: `serve`
pulls in SQLAlchemy, Alembic and cryptography, which `pacsguard --help` and `pacsguard scan`
never use. `pacsguard --help` lists them from `SUBCOMMANDS` without importing any (a unit test
keeps each summary equal to the subcommand's own help).

Exit codes: 0 clean (no finding at or above the failing severity), 1 findings, 2 usage error,
3 internal error.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import typer
from typer.core import TyperGroup

from pacsguard.cli._coerce import install as install_fast_coercion
from pacsguard.cli._coerce import install_on as install_fast_coercion_on
from pacsguard.errors import UsageError

if TYPE_CHECKING:  # typer's own (vendored) click, as TyperGroup's signatures name it
    from typer._click import Command, Context, HelpFormatter, Parameter

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


@dataclass(frozen=True, slots=True)
class Subcommand:
    """Where a subcommand lives: a command function or a `typer.Typer` group, by attribute."""

    module: str
    attribute: str
    summary: str


SUBCOMMANDS: Final[dict[str, Subcommand]] = {
    "scan": Subcommand(
        "pacsguard.cli.scan", "scan", "Probe DICOM endpoints; one JSON Lines record per target."
    ),
    "report": Subcommand(
        "pacsguard.cli.report",
        "report",
        "HTML (with charts), CSV and Markdown reports from a scan's JSON Lines.",
    ),
    "demo": Subcommand(
        "pacsguard.cli.demo",
        "demo",
        "Scan a lab of simulated exposed PACS, then run a secure archive and scan that too.",
    ),
    "lab": Subcommand(
        "pacsguard.cli.lab",
        "app",
        "Synthetic patients and simulated exposed PACS, on loopback addresses only.",
    ),
    "init": Subcommand(
        "pacsguard.cli.init",
        "init",
        "Create what is missing in DATA_DIR; never overwrite a key, certificate or config.",
    ),
    "serve": Subcommand("pacsguard.cli.serve", "serve", "Run the archive until SIGTERM or Ctrl-C."),
    "fsck": Subcommand(
        "pacsguard.cli.serve",
        "fsck",
        "Check that index and blob store agree (exit 1 when they do not).",
    ),
    "unlock": Subcommand(
        "pacsguard.cli.serve",
        "unlock",
        "Lift lockouts in the running archive now, instead of waiting for them to expire.",
    ),
    "reload": Subcommand(
        "pacsguard.cli.serve",
        "reload",
        "Make the running archive re-read its config (users, AEs, roles); audited.",
    ),
    "user": Subcommand(
        "pacsguard.cli.admin_user",
        "app",
        "Users (Argon2id hashes in pacsguard.toml); `pacsguard reload` applies changes.",
    ),
    "ae": Subcommand(
        "pacsguard.cli.admin_ae",
        "app",
        "Registered peers ([[ae]] in pacsguard.toml); `pacsguard reload` applies changes.",
    ),
    "cert": Subcommand(
        "pacsguard.cli.admin_cert",
        "app",
        "Certificates for peers from the archive's CA; prints the SHA-256 to register.",
    ),
    "token": Subcommand(
        "pacsguard.cli.admin_token",
        "app",
        "API tokens (hash stored) for DICOMweb: Authorization: Bearer <token>.",
    ),
    "audit": Subcommand(
        "pacsguard.cli.audit",
        "app",
        "The archive's hash-chained audit log: verify it, find a patient's events, export A.5 XML.",
    ),
    "products": Subcommand(
        "pacsguard.cli.products",
        "app",
        "The data that maps server fingerprints to products and versions to CVEs.",
    ),
    "survey": Subcommand(
        "pacsguard.cli.survey",
        "app",
        "Surveys over stored runs: import, report, diff, disclose.",
    ),
}


def load_subcommand(name: str) -> Command:
    """Import one subcommand and build its click command, as `app.command`/`add_typer` would."""
    entry = SUBCOMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    command: Command
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
        command.name = name
    else:
        holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        holder.command(name=name)(target)
        command = typer.main.get_command(holder)
    install_fast_coercion(command)  # no pydantic for plain option values (see _coerce)
    _plain_help(command)
    return command


def _plain_help(command: Command) -> None:
    """Every subcommand's help as `pacsguard --help`'s: plain text, paragraphs re-wrapped.

    rich's markup would eat help text in brackets (`[dicomweb]`, `[users.NAME]`) and keep the
    docstrings' line breaks mid-sentence; some groups would be boxed and others not.
    """
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        if sub.help and not sub.short_help:  # its first paragraph whole, not cut at 45 chars
            sub.short_help = " ".join(inspect.cleandoc(sub.help).split("\n\n", 1)[0].split())
        _plain_help(sub)


class _LazyGroup(TyperGroup):
    """The top-level group: knows its subcommands by name, builds one when it is used."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        params = super().get_params(ctx)
        install_fast_coercion_on(params)
        return params

    def list_commands(self, ctx: Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load_subcommand(cmd_name)
        return self.commands[cmd_name]

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.summary) for name, entry in SUBCOMMANDS.items()])


app = typer.Typer(
    cls=_LazyGroup,
    name="pacsguard",
    help="Find exposed PACS without keeping patient data; run one that is secure by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich's help formatter would import rich and every subcommand up front.
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Find exposed PACS without keeping patient data; run one that is secure by default."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (usage errors are 2, as in click and POSIX tools)."""
    try:
        app(args=list(argv) if argv is not None else sys.argv[1:], prog_name="pacsguard")
    except UsageError as exc:
        typer.echo(f"pacsguard: error: {exc}", err=True)
        return EXIT_USAGE
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    return EXIT_CLEAN


if __name__ == "__main__":
    raise SystemExit(main())
