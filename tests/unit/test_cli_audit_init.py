"""`pacsguard audit verify|export` and `pacsguard init`, through typer's test runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.log import AuditLog
from pacsguard.archive.audit.patients import PatientKey
from pacsguard.cli import audit, init
from pacsguard.errors import UsageError

app = typer.Typer()
app.command(name="init")(init.init)
app.add_typer(audit.app, name="audit")
runner = CliRunner()


def _log(path: Path, count: int = 3) -> Path:
    with AuditLog(path) as log:
        for _ in range(count):
            log.append(AuditEvent(EventType.STORE, EventAction.CREATE, EventOutcome.SUCCESS))
    return path


def test_verify_intact_log_exits_0(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(_log(tmp_path / "a.jsonl"))])
    assert result.exit_code == 0, result.output
    assert "intact, 3 lines" in result.output


def test_verify_tampered_log_exits_1_and_names_the_line(tmp_path: Path) -> None:
    path = _log(tmp_path / "a.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"outcome":0', b'"outcome":4')
    path.write_bytes(b"".join(lines))
    result = runner.invoke(app, ["audit", "verify", str(path)])
    assert result.exit_code == 1
    assert "line 2:" in result.output
    assert "first bad line 2" in result.output


def test_export_writes_dicom_xml(tmp_path: Path) -> None:
    path = _log(tmp_path / "a.jsonl")
    out = tmp_path / "audit.xml"
    result = runner.invoke(
        app, ["audit", "export", str(path), "--format", "dicom-xml", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    root = ET.parse(out).getroot()
    assert len(root.findall("AuditMessage")) == 3


def test_export_refuses_a_tampered_log_unless_forced(tmp_path: Path) -> None:
    path = _log(tmp_path / "a.jsonl")
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[1:]))
    refused = runner.invoke(app, ["audit", "export", str(path)])
    assert refused.exit_code == 1
    assert "--force" in refused.output
    forced = runner.invoke(app, ["audit", "export", str(path), "--force"])
    assert forced.exit_code == 0
    assert forced.output.count("<AuditMessage>") == 2


def test_init_prints_the_secret_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = runner.invoke(app, ["init", "--data-dir", str(data), "--san", "pacs.local"])
    assert first.exit_code == 0, first.output
    assert "shown now and never again" in first.output
    assert f"the audit log says why: tail -n 3 {data.absolute() / 'audit' / 'audit.jsonl'}" in (
        first.output
    )
    assert str(data / "pacsguard.toml") in first.output
    assert f"Back up {data.absolute() / 'keys' / 'at-rest.key'} apart from the data" in first.output
    second = runner.invoke(app, ["init", "--data-dir", str(data)])
    assert second.exit_code == 0, second.output
    assert "never again" not in second.output
    assert "already set up" in second.output
    assert "Back up" not in second.output


def test_init_hint_names_a_dcmtk_tool_that_sends_a_user_identity(tmp_path: Path) -> None:
    # dcmtk 3.6's echoscu and findscu have no --user: a hint naming them fails for a new user.
    done = runner.invoke(app, ["init", "--data-dir", str(tmp_path / "data")])
    assert done.exit_code == 0, done.output
    hint = next(ln.split() for ln in done.output.splitlines() if "--password" in ln)
    tool = shutil.which(hint[0])
    if tool is None:
        pytest.skip(f"dcmtk's {hint[0]} is not installed")
    usage = subprocess.run([tool, "--help"], capture_output=True, text=True, check=False)
    for option in (word for word in hint if word.startswith(("-", "+"))):
        assert f" {option} " in usage.stdout, option


def _patient_log(path: Path, key_file: Path) -> PatientKey:
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    patients = PatientKey(key_file.read_bytes())
    with AuditLog(path) as log:
        log.append(  # a line written before patient references: the ID in clear
            AuditEvent(
                EventType.STORE,
                EventAction.CREATE,
                EventOutcome.SUCCESS,
                objects=(("patient", "PID-1"),),
            )
        )
        for event_type, pid in ((EventType.STORE, "PID-1"), (EventType.STORE, "PID-2")):
            log.append(
                AuditEvent(
                    event_type,
                    EventAction.CREATE,
                    EventOutcome.SUCCESS,
                    objects=(("study", "1.2.3"), *patients.objects([pid])),
                )
            )
        log.append(
            AuditEvent(
                EventType.RETRIEVE,
                EventAction.READ,
                EventOutcome.SUCCESS,
                (Participant(ae_title="VIEWER", address="127.0.0.1"),),
                (("study", "1.2.3"), *patients.objects(["PID-1", "PID-2"])),
            )
        )
    return patients


def test_find_reads_the_id_from_stdin_and_finds_old_and_new_lines(tmp_path: Path) -> None:
    path, key = tmp_path / "a.jsonl", tmp_path / "at-rest.key"
    patients = _patient_log(path, key)
    verified = runner.invoke(app, ["audit", "verify", str(path)])  # old and new lines, one chain
    assert verified.exit_code == 0 and "intact, 4 lines" in verified.output
    result = runner.invoke(
        app, ["audit", "find", str(path), "--key-file", str(key)], input="PID-1\n"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "4"]
    assert lines[2].split("\t")[2:5] == ["retrieve", "success", "VIEWER@127.0.0.1"]
    assert "PID-1" not in result.stdout
    assert f"3 events about patient {patients.pseudonym('PID-1')}" in result.stderr


def test_find_by_pseudonym_needs_no_key_and_finds_referenced_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    patients = _patient_log(path, tmp_path / "at-rest.key")
    pseudonym = patients.pseudonym("PID-2")
    result = runner.invoke(app, ["audit", "find", str(path), "--pseudonym", pseudonym])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["3", "4"]
    refused = runner.invoke(app, ["audit", "find", str(path)], input="PID-2\n")
    assert refused.exit_code != 0
    assert isinstance(refused.exception, UsageError) and "--key-file" in str(refused.exception)


def test_export_decrypts_with_the_key_and_not_with_another(tmp_path: Path) -> None:
    path, key = tmp_path / "a.jsonl", tmp_path / "at-rest.key"
    patients = _patient_log(path, key)
    opened = runner.invoke(app, ["audit", "export", str(path), "--key-file", str(key)])
    assert opened.exit_code == 0, opened.output
    assert "PID-2" in opened.stdout
    assert "4 of 4 patient references decrypted" in opened.stderr
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    wrong = runner.invoke(app, ["audit", "export", str(path), "--key-file", str(other)])
    assert wrong.exit_code == 0, wrong.output
    assert "PID-2" not in wrong.stdout and patients.pseudonym("PID-2") in wrong.stdout
    assert "0 of 4 patient references decrypted; 4 do not open with this key" in wrong.stderr
    keyless = runner.invoke(app, ["audit", "export", str(path)])
    assert "PID-2" not in keyless.stdout
    assert "4 patient references exported as pseudonyms: pass --key-file" in keyless.stderr


def test_export_with_patient_ids_is_written_for_its_owner_only(tmp_path: Path) -> None:
    path, key, out = tmp_path / "a.jsonl", tmp_path / "at-rest.key", tmp_path / "export.xml"
    _patient_log(path, key)
    out.write_bytes(b"an older export")
    out.chmod(0o644)
    done = runner.invoke(
        app, ["audit", "export", str(path), "--key-file", str(key), "-o", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert b"PID-2" in out.read_bytes()
    assert out.stat().st_mode & 0o777 == 0o600


def test_a_missing_key_file_is_named_as_the_option_without_suggesting_init(tmp_path: Path) -> None:
    # `pacsguard init` would make a new key, which opens none of the log's references.
    path = tmp_path / "a.jsonl"
    _patient_log(path, tmp_path / "at-rest.key")
    for command in (["export", str(path)], ["find", str(path)]):
        done = runner.invoke(
            app, ["audit", *command, "--key-file", str(tmp_path / "nope.key")], input="PID-1\n"
        )
        assert isinstance(done.exception, UsageError), done.output
        assert "--key-file" in str(done.exception) and "init" not in str(done.exception)
