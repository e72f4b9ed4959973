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
    """Attach the subcommands once; imported late so `import pacsguard.cli` stays cheap."""
    if app.registered_commands:
        return
    from pacsguard.cli import audit, demo, init, lab, products, report, scan, serve

    app.command(name="scan")(scan.scan)
    app.command(name="report")(report.report)
    app.command(name="demo")(demo.demo)
    app.add_typer(lab.app, name="lab")
    app.command(name="init")(init.init)
    app.command(name="serve")(serve.serve)
    app.command(name="fsck")(serve.fsck)
    app.command(name="unlock")(serve.unlock)
    app.add_typer(audit.app, name="audit")
    app.add_typer(products.app, name="products")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (usage errors are 2, as in click and POSIX tools)."""
    _register()
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
