"""`pacsguard report`: turn a scan's JSON Lines into HTML, CSV and Markdown reports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pacsguard.errors import UsageError


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the report ({exc.strerror})") from None


def report(
    scan_file: Annotated[Path, typer.Argument(help="A scan's JSON Lines (pacsguard scan -o).")],
    html: Annotated[
        Path | None, typer.Option("--html", help="Self-contained HTML page with charts.")
    ] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="One row per record.")] = None,
    md: Annotated[Path | None, typer.Option("--md", help="Markdown summary and hosts.")] = None,
    title: Annotated[str, typer.Option(help="The reports' title.")] = "pacsguard scan report",
) -> None:
    """HTML (with charts), CSV and Markdown reports from a scan's JSON Lines.

    An executive summary, top findings, and every host's evidence and remediation.

    Without --html/--csv/--md the Markdown report goes to standard output. Hosts flagged as
    honeypots are shown but kept out of the exposure totals.
    """
    from pacsguard.report.digest import digest, read_records
    from pacsguard.report.html import render_html
    from pacsguard.report.markdown import render_markdown
    from pacsguard.report.tabular import write_csv

    result = digest(read_records(scan_file), source=str(scan_file))
    if html is not None:
        _write(html, render_html(result, title=title, source=scan_file.name))
    if csv is not None:
        try:
            with csv.open("w", encoding="utf-8", newline="") as stream:
                write_csv(result.hosts, stream)
        except OSError as exc:
            raise UsageError(f"{csv}: cannot write the report ({exc.strerror})") from None
    if md is not None:
        _write(md, render_markdown(result, title=title))
    if html is None and csv is None and md is None:
        sys.stdout.write(render_markdown(result, title=title))
        return
    written = ", ".join(str(p) for p in (html, csv, md) if p is not None)
    typer.echo(
        f"{result.targets} records, {result.exposed} hosts exposing data, "
        f"{result.honeypots} flagged as honeypots: wrote {written}",
        err=True,
    )
