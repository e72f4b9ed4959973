"""`pacsguard demo` runs end to end: lab scan agrees with the truth, secure archive is clean."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pacsguard.cli import main
from pacsguard.lab.synth import generate_archive


def test_demo_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--hosts", "12", "--base-address", "127.79.0.1", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    said = " ".join(text.split())
    assert "12 of 12 hosts exactly right" in said
    assert "was refused and found nothing" in said
    # The self-check's HTTPS side and the token-authenticated DICOMweb round trip.
    assert "anonymous QIDO-RS refused (401, bearer realm" in said
    assert "accepts TLS 1.2, 1.3 (refuses 1.0, 1.1)" in said
    assert f"$ pacsguard token issue --user admin --data-dir {out / 'archive'}" in said
    assert re.search(r"issued token [0-9a-f]{12} \(printed once", said)
    assert "pgt_" not in said  # the token itself is the command's to print, once
    assert 'GET /studies without a token -> 401 (Bearer realm="pacsguard")' in said
    studies = re.search(
        r"GET /studies with the token -> 200, (\d+) studies \(QIDO-RS search\)", said
    )
    assert studies is not None
    assert int(studies.group(1)) == generate_archive(2026, 2).counts.studies  # what was stored
    assert re.search(
        r"-> 200, one instance of [\d,]+ bytes \(WADO-RS retrieve\), byte-identical to what the "
        r"administrator stored over DIMSE",
        said,
    )
    assert "problem" not in said
    assert len((out / "scan.jsonl").read_text().splitlines()) == 12
    assert json.loads((out / "truth.json").read_text())["host_count"] == 12
    # A second run starts a fresh demo archive (and so holds the admin secret again).
    assert main(args) == 0
    again = " ".join(capsys.readouterr().out.split())
    assert "stored 0" not in again
    assert "byte-identical to what the administrator stored over DIMSE" in again
