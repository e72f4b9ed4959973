"""HTML, CSV and Markdown reports from scan records: totals, honeypots, escaping."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pacsguard.cli import main
from pacsguard.dicom.phi import PhiCategory
from pacsguard.report.digest import digest, read_records
from pacsguard.report.html import render_html
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.report.markdown import render_markdown
from pacsguard.report.tabular import write_csv
from pacsguard.scan.checks import assess
from pacsguard.scan.model import AssociationAttempt, Exposure, Observations, Outcome, Target

HOSTILE_AE = "<script>|=cmd"  # 13 characters: AE titles are at most 16


def record(
    host: str, studies: int, *, honeypot: bool = False, ae: str = "ORTHANC"
) -> dict[str, Any]:
    """A schema-valid record from real checks over plain observations."""
    obs = Observations(
        target=Target(host, 104),
        reachable=True,
        dicom=True,
        attempts=(AssociationAttempt("PACSGUARD", ae, Outcome.ACCEPTED),),
        any_called_ae_accepted=True,
        accepted_called_aets=(ae,),
        accepted_services=("verification", "study-root-find"),
        implementation_class_uid="1.2.276.0.7230010.3.0.3.6.7",
        implementation_version_name="OFFIS_DCMTK_367",
        echo_status=0,
        exposure=Exposure(
            patients=studies,
            studies=studies,
            series=studies * 2,
            instances=studies * 10,
            phi_categories=frozenset({PhiCategory.PATIENT_NAME}),
            method="study-root",
        ),
    )
    rec = to_record(assess(obs))
    jsonschema.validate(rec, load_schema())
    if honeypot:
        rec["honeypot"] = {"flagged": True, "reasons": ["canned patients (dicompot)"]}
    return rec


def closed(host: str) -> dict[str, Any]:
    obs = Observations(Target(host, 104), reachable=False, dicom=False)
    return to_record(assess(obs))


def test_digest_counts_exposure_and_keeps_honeypots_apart() -> None:
    result = digest(
        [
            record("127.0.0.1", 3),
            record("127.0.0.2", 5),
            record("127.0.0.3", 100, honeypot=True),
            closed("127.0.0.4"),
        ]
    )
    assert (result.targets, result.dicom, result.exposed, result.honeypots) == (4, 3, 2, 1)
    assert (result.studies, result.instances) == (8, 80)
    assert sum(result.severities.values()) == 2  # the honeypot's findings do not count
    top = {fid: hosts for fid, _title, _sev, hosts in result.top_findings()}
    assert top["PG-DIMSE-ANON-FIND"] == 2
    assert "PG-CVE-2024-28130" in top  # DCMTK 3.6.7, matched by version


def test_html_is_self_contained_escaped_and_has_charts() -> None:
    page = render_html(
        digest([record("127.0.0.1", 3, ae=HOSTILE_AE), record("127.0.0.2", 9, honeypot=True)])
    )
    assert "<script>" not in page  # a peer-chosen AE title is text, never markup
    assert "&lt;script&gt;" in page
    assert page.count('<svg class="chart"') == 2
    assert 'class="bar"' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "src=" not in page and "<link" not in page  # no external assets
    assert "likely honeypot" in page


def test_csv_has_one_row_per_record_and_neutralises_formulas() -> None:
    result = digest([record("127.0.0.1", 3), closed("127.0.0.2")])
    row = result.hosts[0]
    hostile = row.__class__(
        **{**{f: getattr(row, f) for f in row.__dataclass_fields__}, "error": "=HYPERLINK(1)"}
    )
    out = io.StringIO()
    assert write_csv([*result.hosts, hostile], out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["host"] for r in rows] == ["127.0.0.1", "127.0.0.2", "127.0.0.1"]
    assert rows[0]["studies"] == "3" and rows[0]["association"] == "accepted"
    assert "PG-DIMSE-ANON-FIND" in rows[0]["finding_ids"].split()
    assert rows[2]["error"] == "'=HYPERLINK(1)"


def test_markdown_tables_survive_pipes_and_markup() -> None:
    rec = record("127.0.0.1", 3)
    rec["findings"][0]["title"] = "a|b<i>c</i>"
    text = render_markdown(digest([rec]))
    assert "| expose patient data | 1 |" in text
    assert "<i>" not in text
    assert "a\\|b&lt;i>c&lt;/i>" in text


def test_report_cli_writes_all_three_and_refuses_a_non_scan_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan_file = tmp_path / "scan.jsonl"
    scan_file.write_text(
        "\n".join(json.dumps(r) for r in [record("127.0.0.1", 3), closed("127.0.0.2")]) + "\n"
    )
    out = {k: tmp_path / f"r.{k}" for k in ("html", "csv", "md")}
    args = [
        "report",
        str(scan_file),
        "--html",
        str(out["html"]),
        "--csv",
        str(out["csv"]),
        "--md",
        str(out["md"]),
    ]
    assert main(args) == 0
    assert all(p.stat().st_size > 0 for p in out.values())
    assert main(["report", str(scan_file)]) == 0
    assert "# pacsguard scan report" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"not": "a record"}\n')
    assert main(["report", str(bad)]) == 2
    assert "line 1: not a pacsguard scan record" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert list(read_records(scan_file))
