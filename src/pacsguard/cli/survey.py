"""`pacsguard survey`: the history store's runs, survey tables, trends and disclosure kits.

The store is named by `--store URL` or $PACSGUARD_HISTORY (`sqlite:///history.sqlite`,
`postgresql+psycopg://...`); `pacsguard scan --store URL` fills it as it scans, `survey import`
loads a JSON Lines file as a run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from pacsguard.errors import UsageError

if TYPE_CHECKING:
    from pacsguard.report.survey import SurveyTable

app = typer.Typer(help="Surveys over stored runs: import, report, diff, disclose.")

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="PACSGUARD_HISTORY",
        help="History store URL: sqlite:///PATH or postgresql+psycopg://... "
        "(default: $PACSGUARD_HISTORY).",
    ),
]
HtmlOption = Annotated[Path | None, typer.Option("--html", help="Self-contained HTML page.")]
CsvOption = Annotated[Path | None, typer.Option("--csv", help="CSV for spreadsheets.")]
MdOption = Annotated[Path | None, typer.Option("--md", help="Markdown.")]


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror})") from None


def _write_csv(path: Path, writer: Callable[[TextIO], int]) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="") as stream:
            writer(stream)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror})") from None


@app.command(name="import")
def import_(
    scan_file: Annotated[Path, typer.Argument(help="A scan's JSON Lines (pacsguard scan -o).")],
    store: StoreOption = None,
) -> None:
    """Load a JSON Lines scan file into the history store as one run; prints the run id.

    All or nothing: a malformed line is named and the run removed."""
    from pacsguard.report.digest import read_records
    from pacsguard.survey.store import open_store

    records = read_records(scan_file)
    with open_store(store) as history:
        first = next(records, None)
        if first is None:
            raise UsageError(f"{scan_file}: no scan record to import")
        writer = history.start_run(
            "import",
            source=str(scan_file),
            scope={"file": str(scan_file)},
            started_at=str(first.get("scanned_at") or "") or None,
        )
        last, number = first, 1
        try:
            writer.add(first)
            for record in records:
                number += 1
                writer.add(record)
                last = record
        except (KeyError, TypeError, ValueError) as exc:
            history.delete_run(writer.run_id)
            raise UsageError(
                f"{scan_file} record {number}: malformed ({exc!r}); nothing imported"
            ) from None
        except BaseException:
            history.delete_run(writer.run_id)  # an import is all or nothing
            raise
        writer.close(finished_at=str(last.get("scanned_at") or "") or None)
    typer.echo(f"history run {writer.run_id}: {writer.counts['records']} records", err=True)
    typer.echo(str(writer.run_id))


@app.command(name="runs")
def runs(store: StoreOption = None) -> None:
    """List the runs in the history store."""
    from pacsguard.survey.store import open_store

    with open_store(store) as history:
        for run in history.runs():
            parent = f" (recheck of {run.parent_run})" if run.parent_run else ""
            typer.echo(
                f"{run.id}\t{run.kind}{parent}\t{run.started_at} -> "
                f"{run.finished_at or 'interrupted'}\t{run.records} records, {run.exposed} "
                f"exposing, {run.studies} studies\t{run.source}"
            )


def _survey(store: str | None, run_id: int, include_flagged: bool) -> SurveyTable:
    from pacsguard.report.survey import build_survey
    from pacsguard.survey.store import open_store

    with open_store(store) as history:
        return build_survey(
            history.records(run_id), source=f"run {run_id}", include_flagged=include_flagged
        )


@app.command(name="report")
def report(
    run: Annotated[int, typer.Argument(help="Run id (pacsguard survey runs).")],
    html: HtmlOption = None,
    csv: CsvOption = None,
    md: MdOption = None,
    store: StoreOption = None,
    include_flagged: Annotated[
        bool,
        typer.Option(
            "--include-flagged", help="Count honeypot-flagged and clustered hosts in the totals."
        ),
    ] = False,
    title: Annotated[str, typer.Option(help="The report's title.")] = "",
) -> None:
    """The survey table per country and in total; Markdown on stdout without an output option."""
    from pacsguard.report.survey import (
        render_survey_html,
        render_survey_markdown,
        write_survey_csv,
    )

    table = _survey(store, run, include_flagged)
    name = title or f"pacsguard survey, run {run}"
    if html is not None:
        _write(html, render_survey_html(table, title=name, source=f"history run {run}"))
    if csv is not None:
        _write_csv(csv, lambda s: write_survey_csv(table, s))
    if md is not None:
        _write(md, render_survey_markdown(table, title=name))
    if html is None and csv is None and md is None:
        sys.stdout.write(render_survey_markdown(table, title=name))


@app.command(name="diff")
def diff(
    run_a: Annotated[int, typer.Argument(help="The earlier run.")],
    run_b: Annotated[int, typer.Argument(help="The later run.")],
    html: HtmlOption = None,
    csv: CsvOption = None,
    md: MdOption = None,
    store: StoreOption = None,
    title: Annotated[str, typer.Option(help="The report's title.")] = "",
) -> None:
    """Newly exposed, fixed, still exposed and gone endpoints; growth per country and total."""
    from pacsguard.report.trend import (
        build_trend,
        render_trend_html,
        render_trend_markdown,
        write_trend_csv,
    )

    trend = build_trend(
        _survey(store, run_a, False),
        _survey(store, run_b, False),
        run_a=str(run_a),
        run_b=str(run_b),
    )
    name = title or f"pacsguard trend, run {run_a} -> run {run_b}"
    if html is not None:
        _write(html, render_trend_html(trend, title=name))
    if csv is not None:
        _write_csv(csv, lambda s: write_trend_csv(trend, s))
    if md is not None:
        _write(md, render_trend_markdown(trend, title=name))
    if html is None and csv is None and md is None:
        sys.stdout.write(render_trend_markdown(trend, title=name))


@app.command(name="disclose")
def disclose(
    run: Annotated[int, typer.Argument(help="Run id (pacsguard survey runs).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the kit.")],
    contacts: Annotated[
        Path | None,
        typer.Option("--contacts", help="CSV cidr,organisation[,email]; else the AS organisation."),
    ] = None,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="PDF letters (Chromium).")] = True,
    sender: Annotated[str, typer.Option(help="Who signs the letters.")] = "pacsguard survey",
    store: StoreOption = None,
) -> None:
    """Per organisation: a letter (Markdown, PDF) and findings CSV; cert-report.csv for CERTs."""
    from pacsguard.survey.disclose import read_contacts, write_kit
    from pacsguard.survey.store import open_store

    table = read_contacts(contacts) if contacts is not None else []
    with open_store(store) as history:
        info = history.run(run)
        result = write_kit(
            history.records(run, exposed_only=False),
            out,
            run_id=run,
            scanned=info.started_at,
            contacts=table,
            pdf=pdf,
            sender=sender,
        )
    typer.echo(
        f"{result.organisations} organisations, {result.pdfs} PDF letters, "
        f"{result.csv_rows} CERT rows: wrote {out}",
        err=True,
    )
