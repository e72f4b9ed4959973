"""`pacsguard audit verify|export` and `pacsguard init`, through typer's test runner."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import typer
from typer.testing import CliRunner

from pacsguard.archive.audit.events import AuditEvent, EventAction, EventOutcome, EventType
from pacsguard.archive.audit.log import AuditLog
from pacsguard.cli import audit, init

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
    assert str(data / "pacsguard.toml") in first.output
    second = runner.invoke(app, ["init", "--data-dir", str(data)])
    assert second.exit_code == 0, second.output
    assert "never again" not in second.output
    assert "already set up" in second.output
