"""A survey of a real lab scan: scan --store, import with locations, the survey report in
headless Chromium, the disclosure kit's PDF letters read back with pdftotext, a recheck of one
organisation stored as a linked run, and the trend between the two.

Locations are what the MaxMind enrichment adds to records (`location: {country, asn, as_org}`);
the lab's loopback addresses have none, so the test adds them to a copy of the scan file.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pacsguard.cli import main
from pacsguard.lab.profiles import Profile, plan_farm
from pacsguard.lab.synth import generate_archive
from pacsguard.lab.truth import farm_truth
from pacsguard.survey.store import HistoryStore

from .conftest import RunningFarm
from .test_report_browser import ARTIFACTS, chromium, png_size

MIX = {
    Profile.OPEN: 3.0,
    Profile.CALLED_AE_CHECK: 1.0,
    Profile.STORE_ONLY: 1.0,
    Profile.HONEYPOT_DICOMPOT: 1.0,
}


def pdf_text(path: Path) -> str:
    binary = shutil.which("pdftotext")
    assert binary is not None, "poppler-utils' pdftotext is not installed (./dev test does)"
    return subprocess.run(
        [binary, "-layout", str(path), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def test_survey_of_a_lab_scan_end_to_end(
    running_farm: type[RunningFarm], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = running_farm(plan_farm(12, base_address="127.78.9.1", port=0, seed=11, mix=MIX))
    truth = {h["address"]: h for h in farm_truth(lab.plan)["hosts"]}
    sensitive: set[str] = set()
    for spec in lab.plan.hosts:
        sensitive |= generate_archive(spec.seed, spec.patients).sensitive_values()
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    targets = [f"{h.address}:{h.port}" for h in lab.plan.hosts]

    # 1. scan --store: the run holds every record the JSON Lines file holds
    scan_file = tmp_path / "scan.jsonl"
    code = main(["scan", *targets, "--store", url, "-o", str(scan_file), "--read-timeout", "2",
                 "--format", "table"])  # fmt: skip
    assert code == 1  # findings
    assert "history run 1" in capsys.readouterr().err
    lines = [json.loads(line) for line in scan_file.read_text().splitlines()]
    with HistoryStore(url) as store:
        run = store.run(1)
        assert run.kind == "scan" and run.finished_at is not None
        assert run.records == len(targets) == len(lines)
        assert run.scope["targets"] == targets
        assert sorted(r["host"] for r in store.records(1)) == sorted(r["host"] for r in lines)

    # 2. the same records with locations, imported as run 2
    half = {h.address for h in lab.plan.hosts[:6]}
    located = tmp_path / "located.jsonl"
    with located.open("w") as out:
        for record in lines:
            de = record["host"] in half
            record["location"] = {
                "country": "DE" if de else "FR",
                "asn": 64500 if de else 64501,
                "as_org": "Klinik Nord" if de else "Hopital Sud",
            }
            out.write(json.dumps(record) + "\n")
    assert main(["survey", "import", str(located), "--store", url]) == 0
    assert capsys.readouterr().out.strip() == "2"

    # 3. the survey report: numbers match the lab's truth; the page renders with its charts
    page, md, table_csv = tmp_path / "survey.html", tmp_path / "survey.md", tmp_path / "s.csv"
    assert main(["survey", "report", "2", "--store", url, "--html", str(page), "--md", str(md),
                 "--csv", str(table_csv)]) == 0  # fmt: skip
    rows = {r["country"]: r for r in read_csv(table_csv)}
    assert set(rows) == {"DE", "FR", "total"}
    honest = [h for h in truth.values() if h["query_exposed"] and h["honeypot"] is None]
    decoys = [h for h in truth.values() if h["honeypot"] is not None]
    assert decoys, "the mix must hold a honeypot"
    assert int(rows["total"]["expose_data"]) == len(honest)
    assert int(rows["total"]["study_records"]) == sum(
        h["exposed_counts"]["studies"] for h in honest
    )
    assert int(rows["total"]["instances"]) == sum(h["exposed_counts"]["instances"] for h in honest)
    assert int(rows["total"]["honeypots"]) == len(decoys)
    assert int(rows["total"]["ssn_shaped_ids"]) == sum(
        "patient_id_ssn_shaped" in h["phi_categories"] for h in honest
    )
    assert int(rows["total"]["addresses_probed"]) == len(targets)
    counted = [h for h in truth.values() if h["expected_dicom"] and h["honeypot"] is None]
    stores = sum("storage" in (h["services"] or ()) for h in counted)
    checks = sum(
        h["accepts_any_called_ae"] is False or h["calling_ae_checked"] is True for h in counted
    )
    assert float(rows["total"]["open_store_share_pct"]) == round(100 * stores / len(counted), 1)
    assert float(rows["total"]["ae_check_share_pct"]) == round(100 * checks / len(counted), 1)
    for country in ("DE", "FR"):
        mine = [h for h in honest if (h["address"] in half) == (country == "DE")]
        assert int(rows[country]["study_records"]) == sum(
            h["exposed_counts"]["studies"] for h in mine
        )

    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    assert 'id="survey-table"' in dom
    assert dom.count('<svg class="chart"') == 2
    assert dom.count('class="bar"') >= 2
    assert "Hosts flagged as honeypots" in dom
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "survey-report.png"
    shot.unlink(missing_ok=True)
    chromium(
        "--window-size=1200,1000", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "p2"
    )
    assert png_size(shot) == (1200, 1000)
    assert shot.stat().st_size > 20_000

    # 4. the disclosure kit: one folder per organisation, PDF letters with their endpoints
    first = lab.plan.hosts[0]
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"cidr,organisation,email\n{first.address}/32,Clinic One,c@example.org\n")
    kit = tmp_path / "kit"
    assert main(["survey", "disclose", "2", "--out", str(kit), "--contacts", str(contacts),
                 "--store", url]) == 0  # fmt: skip
    cert = read_csv(kit / "cert-report.csv")
    index = {r["organisation"]: r for r in read_csv(kit / "organisations.csv")}
    assert index["Clinic One"]["email"] == "c@example.org"
    assert all((kit / r["folder"] / "letter.pdf").is_file() for r in index.values())
    notified = {(r["organisation"], f"{r['ip']}:{r['port']}") for r in cert}
    with HistoryStore(url) as store:
        records = list(store.records(2))
    orgs = {org for org, _ in notified}
    assert orgs <= {"Clinic One", "Klinik Nord", "Hopital Sud"}
    for record in records:
        endpoint = f"{record['host']}:{record['port']}"
        worth = not record["honeypot"]["flagged"] and any(
            f["severity"] != "info" for f in record["findings"]
        )
        assert any(e == endpoint for _, e in notified) == worth, endpoint
    letter_artifact = ARTIFACTS / "disclosure-letter.pdf"
    shutil.copyfile(kit / index["Clinic One"]["folder"] / "letter.pdf", letter_artifact)
    for folder in kit.iterdir():
        if not folder.is_dir():
            continue
        text = pdf_text(folder / "letter.pdf")
        org_name = next(o for o in orgs if folder.name.startswith(o.lower().replace(" ", "-")))
        for org, endpoint in notified:
            assert (endpoint in text) == (org == org_name), (folder.name, endpoint)
        assert "How to verify" in text or "verify the fix" in text
    outputs = [page.read_text(), md.read_text(), table_csv.read_text(), dom]
    outputs += [p.read_text() for p in kit.rglob("*") if p.suffix in (".md", ".csv", ".html")]
    outputs += [pdf_text(p) for p in kit.rglob("letter.pdf")]
    for value in sensitive:
        for text in outputs:
            assert value not in text, "a survey output leaks a synthetic patient value"

    # 5. recheck one organisation: all its endpoints (not only those in letters), as run 3
    sud = {
        f"{r['host']}:{r['port']}"
        for r in records
        if r["location"]["as_org"] == "Hopital Sud" and r["host"] != first.address
    }
    assert sud & {e for org, e in notified if org == "Hopital Sud"}
    recheck_file = tmp_path / "recheck.jsonl"
    main(["scan", "--recheck", "2", "--org", "Hopital Sud", "--store", url, "-o",
          str(recheck_file), "--read-timeout", "2", "--format", "table"])  # fmt: skip
    assert "history run 3" in capsys.readouterr().err
    rechecked = [json.loads(line) for line in recheck_file.read_text().splitlines()]
    assert {f"{r['host']}:{r['port']}" for r in rechecked} == sud
    with HistoryStore(url) as store:
        run3 = store.run(3)
        assert (run3.kind, run3.parent_run, run3.records) == ("recheck", 2, len(sud))

    # 6. the trend from run 2 to run 3: the rechecked hosts still expose, the others are gone
    trend_md = tmp_path / "trend.md"
    trend_html = tmp_path / "trend.html"
    assert main(["survey", "diff", "2", "3", "--store", url, "--md", str(trend_md),
                 "--html", str(trend_html)]) == 0  # fmt: skip
    text = trend_md.read_text()
    still = [h for h in honest if f"{h['address']}:" in " ".join(sud)]
    assert f"| still exposed | {len(still)} |" in text
    assert f"| gone | {len(honest) - len(still)} |" in text
    assert "| newly exposed | 0 |" in text and "| fixed | 0 |" in text
    trend_dom = chromium("--dump-dom", trend_html.as_uri(), profile=tmp_path / "p3").stdout
    assert trend_dom.count('<svg class="chart"') == 2
