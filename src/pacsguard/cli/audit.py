"""`pacsguard audit`: check the hash-chained audit log; export it as DICOM audit XML."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pacsguard.archive.audit.export import export_dicom_xml
from pacsguard.archive.audit.log import read_events
from pacsguard.archive.audit.log import verify as verify_log
from pacsguard.errors import AuditLogError, UsageError

EXIT_TAMPERED = 1

app = typer.Typer(
    help="Check the archive's hash-chained audit log and export it (DICOM PS3.15 A.5 XML).",
    no_args_is_help=True,
)


class ExportFormat(StrEnum):
    DICOM_XML = "dicom-xml"


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"{path}: no such audit log file")
    return path


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="The audit log (JSON Lines).")],
) -> None:
    """Check every line's hash, the chain and the head; exit 1 and name the line if tampered."""
    report = verify_log(_existing(path))
    if report.ok:
        typer.echo(f"{path}: intact, {report.lines} lines, last seq {report.last_seq}")
        return
    for problem in report.problems:
        typer.echo(f"{path}: {problem}")
    typer.echo(f"{path}: TAMPERED or damaged, first bad line {report.first_bad_line}")
    raise typer.Exit(EXIT_TAMPERED)


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="The audit log (JSON Lines).")],
    output_format: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.DICOM_XML,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
    source_id: Annotated[
        str, typer.Option(help="AuditSourceID: the archive's AE title or host name.")
    ] = "PACSGUARD",
    force: Annotated[bool, typer.Option(help="Export even if the log fails verification.")] = False,
) -> None:
    """Render every event as a DICOM AuditMessage (IHE ATNA), one document for the whole log."""
    report = verify_log(_existing(path))
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"{path}: {problem}", err=True)
        if not force:
            typer.echo(f"{path}: fails verification; pass --force to export anyway", err=True)
            raise typer.Exit(EXIT_TAMPERED)
    try:
        document = export_dicom_xml(read_events(path), source_id)
    except AuditLogError as exc:
        typer.echo(f"pacsguard: {exc}", err=True)
        raise typer.Exit(EXIT_TAMPERED) from None
    if output is None:
        typer.echo(document.decode("utf-8"), nl=False)
    else:
        output.write_bytes(document)
        typer.echo(f"{report.lines} events written to {output}", err=True)
