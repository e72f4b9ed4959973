"""The HTTP tier's pure parts: targets by port or URL, the cited data file, the QIDO tally, the
checks and their findings, the record and the report digest."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib import resources
from typing import Any

import jsonschema
import pytest

from pacsguard.dicom.phi import PhiCategory
from pacsguard.errors import TargetError
from pacsguard.report.digest import digest, web_summary
from pacsguard.report.html import render_html
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.report.markdown import render_markdown
from pacsguard.scan.checks import assess
from pacsguard.scan.http_catalog import HttpCatalogError, default_catalog, parse_catalog
from pacsguard.scan.http_model import (
    CredentialResult,
    HttpObservations,
    OrthancFacts,
    QidoEndpoint,
    ViewerSeen,
)
from pacsguard.scan.http_probe import parse_challenge, web_exposure
from pacsguard.scan.http_qido import QidoTally, categorize_json
from pacsguard.scan.model import Observations, Severity, Target
from pacsguard.scan.targets import build_scope, parse_target, transport_for


def web(http: HttpObservations, *, port: int = 8042) -> Observations:
    return Observations(
        target=Target("127.0.0.1", port, http.scheme),
        reachable=True,
        dicom=False,
        exposure=web_exposure(http),
        http=http,
    )


OPEN_ORTHANC = HttpObservations(
    scheme="http",
    answered=True,
    root_status=200,
    orthanc=OrthancFacts(
        open=True,
        version="1.10.1",
        api_version=16,
        dicom_aet="ORTHANC",
        dicom_port=4242,
        plugins_enabled=True,
        patients=6,
        studies=9,
        series=18,
        instances=50,
        patients_listable=True,
        patients_listed=6,
    ),
    dicomweb=(
        QidoEndpoint(
            "/dicom-web",
            200,
            open=True,
            studies=9,
            pages=1,
            phi_categories=frozenset({PhiCategory.PATIENT_NAME, PhiCategory.PATIENT_ID}),
        ),
        QidoEndpoint("/dicomweb", 404),
    ),
    viewers=(ViewerSeen("orthanc-explorer", "Orthanc Explorer", "/app/explorer.html", "x"),),
)

LOCKED_ORTHANC = HttpObservations(
    scheme="http",
    answered=True,
    root_status=401,
    auth_scheme="basic",
    auth_realm="Orthanc Secure Area",
    orthanc=OrthancFacts(open=False),
    dicomweb=(QidoEndpoint("/dicom-web", 401),),
)


# --- targets ---------------------------------------------------------------------------------


def test_web_ports_and_urls_choose_the_transport() -> None:
    assert transport_for(8042) == "http"
    assert transport_for(443) == "https"
    assert transport_for(104) == "dimse"
    assert transport_for(104, "https") == "https"
    default = list(build_scope(["127.0.0.1"]))
    assert {(t.port, t.transport) for t in default} >= {
        (104, "dimse"),
        (11112, "dimse"),
        (4242, "dimse"),
        (8042, "http"),
        (8080, "http"),
    }
    assert [(t.port, t.transport) for t in build_scope(["https://127.0.0.1:9443"])] == [
        (9443, "https")
    ]
    assert [(t.port, t.transport) for t in build_scope(["http://[::1]"])] == [(80, "http")]
    cidr = list(build_scope(["http://127.0.0.0/30:9000"]))
    assert [(t.host, t.transport) for t in cidr] == [("127.0.0.1", "http"), ("127.0.0.2", "http")]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ftp://127.0.0.1", "only http:// and https://"),
        ("http://127.0.0.1:8042/dicom-web", "no path"),
        ("https://127.0.0.1:99999", "1-65535"),
    ],
)
def test_bad_web_targets_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(TargetError, match=says):
        parse_target(text)


# --- data file -------------------------------------------------------------------------------


def test_the_shipped_catalog_loads_and_cites_every_entry() -> None:
    catalog = default_catalog()
    assert "Orthanc Secure Area" in catalog.orthanc_realms
    assert {r.path for r in catalog.dicomweb_roots} == {
        "/",
        "/dicom-web",
        "/dcm4chee-arc/aets/DCM4CHEE/rs",
        "/dicomweb",
        "/wado",
    }
    ours = next(r for r in catalog.dicomweb_roots if r.path == "/")
    assert (ours.realm, ours.content_type) == ("pacsguard", "application/dicom+json")
    assert ours.studies_path() == "/studies"
    assert {r.studies_path() for r in catalog.dicomweb_roots if r.path != "/"} == {
        "/dicom-web/studies",
        "/dcm4chee-arc/aets/DCM4CHEE/rs/studies",
        "/dicomweb/studies",
        "/wado/studies",
    }
    assert {v.id for v in catalog.viewers} >= {"orthanc-explorer", "stone-webviewer", "ohif"}
    assert all(v.source for v in catalog.viewers)
    assert catalog.default_credentials[0].id == "orthanc-docker"
    assert all(c.source for c in catalog.default_credentials)
    alice = next(c for c in catalog.default_credentials if c.username == "alice")
    assert alice.password not in repr(alice)


def test_a_broken_catalog_is_refused_with_the_entry_named() -> None:
    text = resources.files("pacsguard.scan").joinpath("data/http.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    broken = copy.deepcopy(data)
    broken["viewers"][1]["pattern"] = "(unclosed"
    with pytest.raises(HttpCatalogError, match=r"viewers\[1\]"):
        parse_catalog(broken)
    broken = copy.deepcopy(data)
    broken["dicomweb_roots"][0]["path"] = "dicom-web"
    with pytest.raises(HttpCatalogError, match=r"dicomweb_roots\[0\]"):
        parse_catalog(broken)
    with pytest.raises(HttpCatalogError, match="format"):
        parse_catalog({"format": "other"})


# --- QIDO tally ------------------------------------------------------------------------------


def _study(uid: str, name: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"0020000D": {"vr": "UI", "Value": [uid]}}
    if name is not None:
        entry["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": name}]}
        entry["00100020"] = {"vr": "LO", "Value": ["123-45-6789"]}
    return entry


def test_tally_counts_distinct_uids_and_keeps_only_categories() -> None:
    tally = QidoTally(page_size=2, max_pages=10)
    tally.add_page([_study("1.1", "Doe^Jane"), _study("1.2")])
    assert not tally.done
    tally.add_page([_study("1.2"), _study("1.3")])  # overlapping page: 1.2 counted once
    tally.add_page([_study("1.4")])  # short page: the last one
    assert (tally.studies, tally.done, tally.lower_bound) == (4, True, False)
    assert tally.phi == {
        PhiCategory.PATIENT_NAME,
        PhiCategory.PATIENT_ID,
        PhiCategory.PATIENT_ID_SSN_SHAPED,
    }
    assert "Doe" not in repr(tally.__dict__)


def test_tally_budget_and_garbage_make_lower_bounds() -> None:
    tally = QidoTally(page_size=1, max_pages=2)
    tally.add_page([_study("1")])
    tally.add_page([_study("2")])
    assert (tally.studies, tally.done, tally.lower_bound) == (2, True, True)
    assert tally.note == "page budget of 2 spent"
    odd = QidoTally(page_size=10, max_pages=5)
    odd.add_page({"not": "a list"})
    assert (odd.done, odd.lower_bound) == (True, True)
    assert categorize_json({"00100010": {"vr": "PN", "Value": [42]}}) <= set(PhiCategory)


def test_challenges_parse_to_scheme_and_realm() -> None:
    assert parse_challenge('Basic realm="Orthanc Secure Area"') == (
        "basic",
        "Orthanc Secure Area",
    )
    assert parse_challenge("Bearer") == ("bearer", None)
    assert parse_challenge('Weird realm="x\x00y"') == ("other", "xy")
    assert parse_challenge(None) == (None, None)


# --- checks ----------------------------------------------------------------------------------


def test_open_orthanc_findings_scores_and_product() -> None:
    report = assess(web(OPEN_ORTHANC))
    found = {f.id: f for f in report.findings}
    assert set(found) >= {
        "PG-HTTP-ORTHANC-OPEN-API",
        "PG-HTTP-QIDO-ANON",
        "PG-HTTP-NO-TLS",
        "PG-HTTP-VIEWER",
    }
    assert not any(i.startswith("PG-DIMSE-") for i in found)
    assert found["PG-HTTP-ORTHANC-OPEN-API"].severity is Severity.CRITICAL
    assert found["PG-HTTP-QIDO-ANON"].cvss_score == 7.5
    assert found["PG-HTTP-QIDO-ANON"].evidence["phi_categories"] == ["patient_id", "patient_name"]
    assert found["PG-HTTP-VIEWER"].severity is Severity.INFO
    assert report.product is not None
    assert (report.product.id, report.product.version, report.product.basis) == (
        "orthanc",
        "1.10.1",
        "http_orthanc_version",
    )
    assert any(f.id.startswith("PG-CVE-") for f in report.findings)


def test_locked_orthanc_only_lacks_tls_and_https_has_no_transport_finding() -> None:
    report = assess(web(LOCKED_ORTHANC))
    assert [f.id for f in report.findings] == ["PG-HTTP-NO-TLS"]
    assert report.findings[0].evidence["basic_auth_in_clear"] is True
    assert "in clear" in report.findings[0].title
    https = HttpObservations(
        scheme="https",
        answered=True,
        auth_scheme="basic",
        orthanc=OrthancFacts(open=False),
    )
    assert assess(web(https, port=443)).findings == ()


def test_a_plain_web_server_is_not_a_pacs() -> None:
    plain = HttpObservations(scheme="http", answered=True, root_status=200, server="nginx")
    assert assess(web(plain, port=80)).findings == ()


def test_default_credentials_finding_names_the_login_not_the_password() -> None:
    http = HttpObservations(
        scheme="https",
        answered=True,
        auth_scheme="basic",
        orthanc=OrthancFacts(open=False),
        default_credentials_tried=True,
        default_credentials=(
            CredentialResult("orthanc-docker", "orthanc", "/system", "https://example.org/doc"),
        ),
    )
    report = assess(web(http, port=443))
    finding = next(f for f in report.findings if f.id == "PG-HTTP-DEFAULT-CREDENTIALS")
    assert finding.severity is Severity.CRITICAL
    assert finding.evidence["credentials"] == [
        {"id": "orthanc-docker", "username": "orthanc", "path": "/system"}
    ]
    record = to_record(report)
    jsonschema.validate(record, load_schema())
    assert record["http"]["default_credentials"]["working"][0]["id"] == "orthanc-docker"


# --- record and reports ----------------------------------------------------------------------


def test_records_validate_and_reports_count_web_exposure() -> None:
    schema = load_schema()
    records = []
    for http in (OPEN_ORTHANC, LOCKED_ORTHANC):
        record = to_record(assess(web(http)))
        jsonschema.validate(record, schema)
        records.append(record)
    qido_only = HttpObservations(
        scheme="http",
        answered=True,
        dicomweb=(QidoEndpoint("/dicomweb", 200, open=True, studies=100, lower_bound=True),),
    )
    record = to_record(assess(web(qido_only, port=8080)))
    jsonschema.validate(record, schema)
    records.append(record)
    dimse = Observations(Target("127.0.0.1", 104), reachable=False, dicom=False)
    plain = to_record(assess(dimse))
    assert plain["http"] is None
    jsonschema.validate(plain, schema)
    records.append(plain)
    assert records[0]["exposure"]["method"] == "orthanc-rest"
    assert records[0]["exposure"]["phi_categories"] == ["patient_id", "patient_name"]
    assert records[1]["exposure"] is None
    assert records[2]["exposure"]["method"] == "qido-rs"
    result = digest(records)
    assert result.exposed == 2
    assert (result.patients, result.studies, result.instances) == (6, 9 + 100, 50)
    assert result.lower_bound is True
    assert "PG-HTTP-QIDO-ANON" in result.finding_hosts
    opened, locked, qido, dimse_row = (h.web for h in result.hosts)
    assert opened is not None and opened.startswith("Orthanc 1.10.1 REST API open")
    assert "QIDO-RS open at /dicom-web (9 studies)" in opened
    assert locked is not None and locked.startswith("Orthanc REST API behind a login")
    assert qido == "QIDO-RS open at /dicomweb (at least 100 studies)"
    assert dimse_row is None
    html = render_html(result)
    markdown = render_markdown(result)
    assert "Web: Orthanc 1.10.1 REST API open" in html
    assert "- web: Orthanc 1.10.1 REST API open" in markdown


PACSGUARD_CLOSED = HttpObservations(
    scheme="https",
    answered=True,
    root_status=401,
    auth_scheme="bearer",
    auth_realm="pacsguard",
    dicomweb=(
        QidoEndpoint("/", 401, product="pacsguard archive DICOMweb", auth_required=True),
        QidoEndpoint("/dicom-web", 401),
    ),
)


def test_a_recognised_closed_dicomweb_is_informational_and_its_tls_is_checked() -> None:
    report = assess(web(PACSGUARD_CLOSED, port=8443))
    assert [(f.id, f.severity) for f in report.findings] == [
        ("PG-HTTP-DICOMWEB-AUTH", Severity.INFO)
    ]
    finding = report.findings[0]
    assert finding.title == "DICOMweb (pacsguard archive DICOMweb) requires authentication"
    assert finding.evidence["realm"] == "pacsguard"
    assert finding.evidence["endpoints"] == [
        {"path": "/", "status": 401, "product": "pacsguard archive DICOMweb"}
    ]
    assert PACSGUARD_CLOSED.pacs  # so the TLS checks look at its certificate
    assert report.observations.exposure is None
    # Over plain HTTP the same service sends its tokens in clear.
    plain = HttpObservations(
        scheme="http", answered=True, dicomweb=PACSGUARD_CLOSED.dicomweb, auth_scheme="bearer"
    )
    assert {f.id for f in assess(web(plain)).findings} == {
        "PG-HTTP-DICOMWEB-AUTH",
        "PG-HTTP-NO-TLS",
    }
    # A 401 on a root without a recognised realm is a login wall, not a DICOMweb.
    wall = HttpObservations(
        scheme="https", answered=True, dicomweb=(QidoEndpoint("/dicomweb", 401),)
    )
    assert not wall.pacs
    assert assess(web(wall, port=443)).findings == ()
    # One root open and another closed: the open one is the finding.
    mixed = HttpObservations(
        scheme="https",
        answered=True,
        dicomweb=(*PACSGUARD_CLOSED.dicomweb, QidoEndpoint("/dicomweb", 200, open=True)),
    )
    assert {f.id for f in assess(web(mixed, port=443)).findings} == {"PG-HTTP-QIDO-ANON"}


def test_a_closed_dicomweb_record_validates_and_reads_in_the_digest() -> None:
    record = to_record(assess(web(PACSGUARD_CLOSED, port=8443)))
    jsonschema.validate(record, load_schema())
    assert record["http"]["dicomweb"][0] == {
        "path": "/",
        "status": 401,
        "open": False,
        "studies": 0,
        "lower_bound": False,
        "pages": 0,
        "phi_categories": [],
        "note": None,
        "product": "pacsguard archive DICOMweb",
        "auth_required": True,
    }
    assert web_summary(record["http"]) == (
        'login asked: bearer (realm "pacsguard"); DICOMweb at / asks for credentials '
        "(pacsguard archive DICOMweb)"
    )


def test_web_summary_of_a_locked_server_and_a_silent_one() -> None:
    locked = to_record(assess(web(LOCKED_ORTHANC)))
    assert web_summary(locked["http"]) == (
        'Orthanc REST API behind a login; login asked: basic (realm "Orthanc Secure Area")'
    )
    silent = HttpObservations(scheme="http")
    assert web_summary(to_record(assess(web(silent)))["http"]) == "no HTTP answer"


def test_terminal_summary_and_table_count_web_targets() -> None:
    from rich.console import Console

    from pacsguard.report.table import ScanSummary, render_table

    summary = ScanSummary()
    reports = [assess(web(OPEN_ORTHANC)), assess(web(LOCKED_ORTHANC, port=8043))]
    for report in reports:
        summary.add(report)
    assert "1 expose data (6 patients, 9 studies, 50 instances)" in summary.render()
    console = Console(record=True, width=120)
    render_table(reports, console)
    text = console.export_text()
    assert "6/9/50" in text
    assert "Orthanc 1.10.1 REST API open" in text
    assert "Orthanc REST API behind a login" in text
    assert "PG-HTTP-ORTHANC-OPEN-API" in text


def test_scan_help_stays_free_of_httpx() -> None:
    code = (
        "import sys; from pacsguard.cli import main; "
        "import pacsguard.cli.scan; "
        "assert 'httpx' not in sys.modules, 'httpx imported at start'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
