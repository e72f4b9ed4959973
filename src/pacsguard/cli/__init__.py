"""The `pacsguard` command line. One module per subcommand; `main(argv)` is the entry point.

Exit codes: 0 clean (no finding at or above the failing severity), 1 findings, 2 usage error,
3 internal error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from pacsguard.errors import UsageError

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

app = typer.Typer(
    name="pacsguard",
    help="Find exposed PACS without keeping patient data; run one that is secure by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so that `import pacsguard.cli` stays cheap and cycle-free.
    from pacsguard.cli import lab  # noqa: PLC0415

    app.add_typer(lab.app, name="lab")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising SystemExit."""
    _register()
    try:
        app(args=list(argv) if argv is not None else sys.argv[1:], standalone_mode=False)
    except UsageError as exc:
        typer.echo(f"pacsguard: error: {exc}", err=True)
        return EXIT_USAGE
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return 130
    except Exception as exc:
        import click  # noqa: PLC0415

        if isinstance(exc, click.ClickException):
            exc.show()
            return EXIT_USAGE
        raise
    return EXIT_CLEAN


if __name__ == "__main__":
    raise SystemExit(main())
