"""`pacsguard demo` runs end to end: lab scan agrees with the truth, secure archive is clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsguard.cli import main


def test_demo_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--hosts", "12", "--base-address", "127.79.0.1", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "12 of 12 hosts exactly right" in " ".join(text.split())
    assert "was refused and found nothing" in " ".join(text.split())
    assert len((out / "scan.jsonl").read_text().splitlines()) == 12
    assert json.loads((out / "truth.json").read_text())["host_count"] == 12
    # A second run starts a fresh demo archive (and so holds the admin secret again).
    assert main(args) == 0
    assert "stored 0" not in " ".join(capsys.readouterr().out.split())
