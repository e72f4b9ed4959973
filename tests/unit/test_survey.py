"""Survey tables, trends and disclosure letters from records built by the real checks."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from pacsguard.dicom.phi import PhiCategory
from pacsguard.errors import UsageError
from pacsguard.report.charts import paired_bar_chart
from pacsguard.report.digest import row_from_record
from pacsguard.report.jsonl import to_record
from pacsguard.report.survey import build_survey, render_survey_html, write_survey_csv
from pacsguard.report.trend import build_trend, render_trend_markdown, write_trend_csv
from pacsguard.scan.checks import assess
from pacsguard.scan.model import AssociationAttempt, Exposure, Observations, Outcome, Target
from pacsguard.survey.disclose import (
    CERT_COLUMNS,
    group_by_organisation,
    letter_html,
    letter_markdown,
    read_contacts,
    write_cert_csv,
)


def host(
    address: str,
    studies: int,
    *,
    country: str | None = None,
    as_org: str | None = None,
    ssn: bool = False,
    store: bool = False,
    called_ae_check: bool = False,
    reachable: bool = True,
    patients: int | None = None,
    tls: bool = False,
) -> dict[str, Any]:
    """A record from real checks; `location` as the MaxMind enrichment adds it."""
    if not reachable:
        rec = to_record(assess(Observations(Target(address, 104), reachable=False, dicom=False)))
    else:
        categories = {PhiCategory.PATIENT_NAME, PhiCategory.PATIENT_ID}
        if ssn:
            categories.add(PhiCategory.PATIENT_ID_SSN_SHAPED)
        services = ("verification", "study-root-find", *(("storage",) if store else ()))
        obs = Observations(
            target=Target(address, 104),
            reachable=True,
            dicom=True,
            attempts=(AssociationAttempt("PACSGUARD", "PACS", Outcome.ACCEPTED),),
            any_called_ae_accepted=not called_ae_check,
            calling_ae_checked=False,
            accepted_called_aets=("PACS",),
            accepted_services=services,
            implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.1",
            implementation_version_name="PYNETDICOM_301",
            echo_status=0,
            tls=tls,
            exposure=Exposure(
                patients=studies if patients is None else patients,
                studies=studies,
                series=studies,
                instances=studies * 10,
                phi_categories=frozenset(categories),
                method="study-root",
            )
            if studies
            else None,
        )
        rec = to_record(assess(obs))
    if country is not None:
        rec["location"] = {"country": country, "asn": 64500, "as_org": as_org}
    return rec


def test_survey_table_per_country_leaves_clusters_and_honeypots_out() -> None:
    records = [
        host("127.0.0.1", 3, country="DE", as_org="Klinik Nord", ssn=True, store=True),
        host("127.0.0.2", 5, country="DE", called_ae_check=True),
        host("127.0.0.3", 0, country="FR", tls=True),
        host("127.0.0.4", 0, reachable=False),  # no location: country "unknown"
        # one fleet of three identical hosts over two countries: a cluster in both
        host("127.0.1.1", 7, country="FR"),
        host("127.0.1.2", 7, country="FR"),
        host("127.0.1.3", 7, country="DE"),
    ]
    flagged = host("127.0.2.1", 40, country="FR", tls=True)
    flagged["honeypot"] = {"flagged": True, "signatures": ["x"], "reasons": ["canned archive"]}
    table = build_survey([*records, flagged])
    lines = {line.key: line.values() for line in table.lines}
    assert set(lines) == {"DE", "FR", "unknown", "total"}
    total, de, fr = lines["total"], lines["DE"], lines["FR"]
    assert total["addresses_probed"] == 8
    assert total["speak_dicom"] == 7
    assert total["expose_data"] == 2  # the fleet (3) and the honeypot are left out
    assert (total["study_records"], total["instances"]) == (8, 80)
    assert total["clustered_hosts"] == 3 and total["honeypots"] == 1
    assert total["ssn_shaped_ids"] == 1
    assert (de["expose_data"], de["study_records"], de["clustered_hosts"]) == (2, 8, 1)
    assert (fr["expose_data"], fr["study_records"], fr["clustered_hosts"]) == (0, 0, 2)
    # shares are of DICOM speakers, honeypots apart: 1 of 6 checks AE titles, 1 of 6 stores
    assert total["ae_check_share_pct"] == pytest.approx(16.7)
    assert total["open_store_share_pct"] == pytest.approx(16.7)
    assert total["tls_share_pct"] == pytest.approx(16.7)  # the flagged TLS host is not counted
    assert [h.endpoint for h in table.flagged_hosts()] == ["127.0.2.1:104"]

    out = io.StringIO()
    assert write_survey_csv(table, out) == 4
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[-1]["country"] == "total" and rows[-1]["study_records"] == "8"

    counted = build_survey([*records, flagged], include_flagged=True).total.values()
    assert counted["expose_data"] == 6
    assert counted["study_records"] == 8 + 21 + 40


def test_survey_html_is_self_contained_with_both_charts() -> None:
    page = render_survey_html(
        build_survey([host("127.0.0.1", 3, country="<b>X", as_org="A")]), title="t"
    )
    assert page.count('<svg class="chart"') == 2
    assert "<b>X" not in page and "&lt;b&gt;X" in page
    assert "src=" not in page and "<link" not in page


def test_paired_bar_chart_draws_two_bars_per_label_and_escapes() -> None:
    svg = paired_bar_chart(
        "t", [("<DE>", 3, 7), ("FR", 0, 2)], chart_id="c", legend=("run 1", "run 2")
    )
    assert svg.count('class="bar"') == 4
    assert "<DE>" not in svg and "&lt;DE&gt;" in svg
    assert 'width="360"' in svg  # the largest value spans the whole bar width


def test_trend_sorts_endpoints_into_new_fixed_still_and_gone() -> None:
    run_a = [
        host("127.0.0.1", 3, country="DE"),  # still exposed, grows
        host("127.0.0.2", 5, country="DE"),  # fixed: reachable, nothing exposed
        host("127.0.0.3", 4, country="FR"),  # gone: unreachable in B
        host("127.0.0.4", 2, country="FR"),  # gone: not in B at all
    ]
    run_b = [
        host("127.0.0.1", 30, country="DE"),
        host("127.0.0.2", 0, country="DE"),
        host("127.0.0.3", 0, reachable=False),
        host("127.0.0.5", 6, country="NL"),  # newly exposed
    ]
    trend = build_trend(build_survey(run_a), build_survey(run_b), run_a="1", run_b="2")
    endpoints = {c: [r[0] for r in rows] for c, rows in trend.hosts.items()}
    assert endpoints == {
        "newly_exposed": ["127.0.0.5:104"],
        "fixed": ["127.0.0.2:104"],
        "still_exposed": ["127.0.0.1:104"],
        "gone": ["127.0.0.3:104", "127.0.0.4:104"],
    }
    growth = {g.key: g for g in trend.growth}
    assert (growth["total"].studies_a, growth["total"].studies_b) == (14, 36)
    assert (growth["total"].instances_a, growth["total"].instances_b) == (140, 360)
    assert (growth["DE"].studies_a, growth["DE"].studies_b) == (8, 30)
    assert (growth["NL"].studies_a, growth["NL"].studies_b) == (0, 6)
    text = render_trend_markdown(trend, title="trend")
    assert "study records 14 -> 36 (+157.1%)" in text
    out = io.StringIO()
    write_trend_csv(trend, out)
    kinds = [row["kind"] for row in csv.DictReader(io.StringIO(out.getvalue()))]
    assert kinds.count("host") == 5 and kinds.count("growth") == 5  # DE FR NL unknown total


def test_contacts_take_precedence_by_longest_prefix_then_as_org(tmp_path: Path) -> None:
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(
        "cidr,organisation,email\n127.0.0.8/29,Loopback Health,a@example.org\n"
        "127.0.0.0/30,Clinic North,north@example.org\n"
    )
    table = read_contacts(contacts)
    records = [
        host("127.0.0.1", 3, country="DE", as_org="AS Provider"),
        host("127.0.0.9", 2, country="DE", as_org="AS Provider"),
        host("127.1.0.1", 2, country="DE", as_org="AS Provider"),
        host("127.1.0.2", 2),
        host("127.0.0.2", 0, reachable=False),  # nothing to notify
    ]
    orgs = {o.name: o for o in group_by_organisation(records, table)}
    assert {n: [h.endpoint for h in o.hosts] for n, o in orgs.items()} == {
        "AS Provider": ["127.1.0.1:104"],
        "Clinic North": ["127.0.0.1:104"],
        "Loopback Health": ["127.0.0.9:104"],
        "unknown organisation": ["127.1.0.2:104"],
    }
    assert orgs["Clinic North"].email == "north@example.org"

    out = io.StringIO()
    rows = write_cert_csv(orgs.values(), out)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(parsed[0]) == CERT_COLUMNS and len(parsed) == rows
    assert {r["finding_id"] for r in parsed} >= {"PG-DIMSE-ANON-FIND", "PG-DIMSE-PHI-EXPOSED"}
    assert all(r["severity"] != "info" for r in parsed)

    letter = letter_markdown(orgs["Clinic North"], run_id=4, scanned="2026-12-05", sender="CERT")
    assert "127.0.0.1:104" in letter and "Verify:" in letter and "--recheck 4" in letter
    page = letter_html(letter, title="letter")
    assert "<table>" in page and "127.0.0.1:104" in page


def test_a_bad_contact_table_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text("cidr,organisation\n127.0.0.0/8,A\nnot-a-net,B\n")
    with pytest.raises(UsageError, match="line 3"):
        read_contacts(bad)
    bad.write_text("network,name\n")
    with pytest.raises(UsageError, match="cidr,organisation"):
        read_contacts(bad)


def test_row_reads_location_and_defaults_to_unknown() -> None:
    assert row_from_record(host("127.0.0.1", 1)).country == "unknown"
    row = row_from_record(host("127.0.0.1", 1, country="DE", as_org="Org"))
    assert (row.country, row.asn, row.as_org) == ("DE", 64500, "Org")
