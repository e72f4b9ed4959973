"""`pacsguard audit`: check the hash-chained audit log, find a patient's events, export it as
DICOM audit XML.

Audit events name patients by reference (`pacsguard.archive.audit.patients`): a pseudonym keyed
by the archive's at-rest key, and the Patient ID sealed under it. `find` and `export` take that
key (`--key-file`, the archive's storage.key_file); `find` reads the Patient ID from a hidden
prompt or standard input, never from the command line, which other users of the machine can
read in the process list and which shells keep in their history.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pacsguard.archive.audit.export import export_dicom_xml
from pacsguard.archive.audit.log import LoggedEvent, read_events
from pacsguard.archive.audit.log import verify as verify_log
from pacsguard.archive.audit.patients import (
    PATIENT_REF,
    PatientKey,
    PatientMatch,
    events_about,
    is_pseudonym,
)
from pacsguard.errors import AuditLogError, UsageError

EXIT_TAMPERED = 1

app = typer.Typer(
    help=(
        "The archive's hash-chained audit log: verify it, find a patient's events, export A.5 XML."
    ),
    no_args_is_help=True,
)


class ExportFormat(StrEnum):
    DICOM_XML = "dicom-xml"


KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help="The archive's at-rest key (storage.key_file, DATA_DIR/keys/at-rest.key): opens "
        "the patient references.",
    ),
]


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"{path}: no such audit log file")
    return path


def _patient_key(key_file: Path | None) -> PatientKey | None:
    if key_file is None:
        return None
    if not key_file.is_file():  # not "run pacsguard init": a new key would open nothing here
        raise UsageError(
            f"--key-file {key_file}: no such file; give the archive's storage.key_file "
            "(DATA_DIR/keys/at-rest.key unless the config names another)"
        )
    from pacsguard.archive.security.bootstrap import load_at_rest_key

    return PatientKey(load_at_rest_key(key_file))


def _write_private(path: Path, data: bytes) -> None:
    """Write an export readable by its owner only: with --key-file it holds Patient IDs."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        out.write(data)


def _read_patient_id() -> str:
    """One Patient ID: a hidden prompt on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        value = str(typer.prompt("Patient ID", hide_input=True, err=True))
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise UsageError("no Patient ID given (on a prompt or one line of standard input)")
    return value


def _describe(logged: LoggedEvent) -> str:
    """One event as a line of tab-separated fields, without any patient value."""
    event = logged.event
    who = ",".join(
        "@".join(part for part in (p.user or p.ae_title, p.address) if part)
        for p in event.participants
    )
    objects = ",".join(f"{kind}={ident}" for kind, ident in event.objects if kind == "study")
    detail = ",".join(f"{key}={value}" for key, value in sorted(event.detail.items()))
    fields = (
        str(logged.seq),
        logged.time.isoformat().replace("+00:00", "Z"),
        event.event.value,
        event.outcome.name.lower(),
        who or "-",
        objects or "-",
        detail or "-",
    )
    return "\t".join(fields)


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
    key_file: KeyFile = None,
) -> None:
    """Render every event as a DICOM AuditMessage (IHE ATNA), one document for the whole log.

    With --key-file, patients are named by Patient ID (decrypted); without it, by pseudonym."""
    report = verify_log(_existing(path))
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"{path}: {problem}", err=True)
        if not force:
            typer.echo(f"{path}: fails verification; pass --force to export anyway", err=True)
            raise typer.Exit(EXIT_TAMPERED)
    patients = _patient_key(key_file)
    try:
        document = export_dicom_xml(read_events(path), source_id, patients)
        references = [
            ident
            for logged in read_events(path)
            for kind, ident in logged.event.objects
            if kind == PATIENT_REF
        ]
    except AuditLogError as exc:
        typer.echo(f"pacsguard: {exc}", err=True)
        raise typer.Exit(EXIT_TAMPERED) from None
    if references and patients is None:
        typer.echo(
            f"{len(references)} patient references exported as pseudonyms: pass --key-file "
            "(the archive's storage.key_file) to export Patient IDs",
            err=True,
        )
    elif references and patients is not None:
        closed = sum(1 for ref in references if patients.reveal(ref) is None)
        typer.echo(
            f"{len(references) - closed} of {len(references)} patient references decrypted"
            + (
                f"; {closed} do not open with this key (another archive's key?) and are "
                "exported as pseudonyms"
                if closed
                else ""
            ),
            err=True,
        )
    if output is None:
        typer.echo(document.decode("utf-8"), nl=False)
    else:
        _write_private(output, document)
        typer.echo(f"{report.lines} events written to {output}", err=True)


@app.command()
def find(
    path: Annotated[Path, typer.Argument(help="The audit log (JSON Lines).")],
    key_file: KeyFile = None,
    pseudonym: Annotated[
        str | None,
        typer.Option(help="Search for this pseudonym (as a syslog copy shows it); no key needed."),
    ] = None,
) -> None:
    """List every event about one patient: stores, retrieves, moves (one line each: seq, time,
    event, outcome, who, studies, detail).

    The Patient ID is read from a hidden prompt (or one line of standard input), never from the
    command line; with --key-file its pseudonym is computed and searched for, and lines written
    before pseudonyms, which hold the ID itself, are matched too."""
    _existing(path)
    if pseudonym is not None:
        if not is_pseudonym(pseudonym):
            raise UsageError(
                f"--pseudonym: expected 32 lowercase hex digits, got {len(pseudonym)} characters"
            )
        wanted = PatientMatch(pseudonym)
    else:
        patients = _patient_key(key_file)
        if patients is None:
            raise UsageError(
                "pass --key-file (the archive's storage.key_file, DATA_DIR/keys/at-rest.key "
                "unless the config names another) to search by Patient ID, or --pseudonym"
            )
        patient_id = _read_patient_id()
        wanted = PatientMatch(patients.pseudonym(patient_id), patient_id)
    report = verify_log(path)
    if not report.ok:
        typer.echo(
            f"{path}: fails verification (first bad line {report.first_bad_line}); run "
            "`pacsguard audit verify`; searching it anyway",
            err=True,
        )
    try:
        found = [_describe(logged) for logged in events_about(read_events(path), wanted)]
    except AuditLogError as exc:
        typer.echo(f"pacsguard: {exc}", err=True)
        raise typer.Exit(EXIT_TAMPERED) from None
    for line in found:
        typer.echo(line)
    typer.echo(f"{len(found)} events about patient {wanted.pseudonym}", err=True)
