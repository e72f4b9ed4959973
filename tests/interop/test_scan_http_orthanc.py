"""The HTTP tier against Debian's Orthanc with Debian's DICOMweb plugin, with and without a login.

Each Orthanc is loaded with the synthetic lab archive over DIMSE; the scanner must report the
exact counts from /statistics and QIDO-RS, name Orthanc and its version (and the CVEs of that
version), see the realm of a locked one, and keep no synthetic patient value anywhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from pacsguard.cli import main
from pacsguard.lab.certificates import CertSpec
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.scan.checks import assess
from pacsguard.scan.fingerprints import SERVER_SURFACES, default_data
from pacsguard.scan.http_probe import HttpOptions, probe_http
from pacsguard.scan.model import HostReport, Target

from ._orthanc import dicomweb_plugin, orthanc_rest_get
from ._tls_peers import StunnelService, running_stunnel
from .conftest import require_tools
from .peers import LabData, OrthancPeer, locked_profile, open_profile, running_orthanc

pytestmark = pytest.mark.interop

OPTIONS = HttpOptions(connect_timeout=3.0, read_timeout=10.0, total_timeout=60.0)


def _require_plugin() -> None:
    if dicomweb_plugin() is None:
        message = "not installed: orthanc-dicomweb (Debian)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def open_web_orthanc(
    tmp_path_factory: pytest.TempPathFactory, lab_data: LabData
) -> Iterator[OrthancPeer]:
    """The OPEN profile with REST, Orthanc Explorer and DICOMweb open to anyone."""
    require_tools("Orthanc", "storescu")
    _require_plugin()
    profile = replace(open_profile(), name="open-web", web=True)
    with running_orthanc(profile, tmp_path_factory.mktemp("orthanc-open-web"), lab_data) as peer:
        yield peer


@pytest.fixture(scope="module")
def locked_web_orthanc(
    tmp_path_factory: pytest.TempPathFactory, lab_data: LabData
) -> Iterator[OrthancPeer]:
    """The LOCKED profile (AuthenticationEnabled, one random user) with DICOMweb loaded."""
    require_tools("Orthanc", "storescu")
    _require_plugin()
    profile = replace(locked_profile(), name="locked-web", web=True)
    workdir = tmp_path_factory.mktemp("orthanc-locked-web")
    with running_orthanc(profile, workdir, lab_data) as peer:
        yield peer


def scan_web(peer: OrthancPeer, options: HttpOptions = OPTIONS) -> HostReport:
    return assess(asyncio.run(probe_http(Target(peer.host, peer.http_port, "http"), options)))


def test_open_orthanc_rest_and_qido_counted_exactly(
    open_web_orthanc: OrthancPeer, lab_data: LabData
) -> None:
    plugins = orthanc_rest_get(open_web_orthanc, "/plugins")
    assert "dicom-web" in plugins  # Debian's plugin really is loaded
    report = scan_web(open_web_orthanc)
    http = report.observations.http
    assert http is not None and http.answered
    orthanc = http.orthanc
    assert orthanc is not None and orthanc.open is True
    system = orthanc_rest_get(open_web_orthanc, "/system")
    assert orthanc.version == system["Version"]
    assert orthanc.dicom_aet == open_web_orthanc.aet
    counts = lab_data.counts
    assert (orthanc.patients, orthanc.studies, orthanc.series, orthanc.instances) == (
        counts.patients,
        counts.studies,
        counts.series,
        counts.instances,
    )
    exposure = report.observations.exposure
    assert exposure is not None and exposure.method == "orthanc-rest"
    assert (exposure.studies, exposure.lower_bound) == (counts.studies, False)
    assert orthanc.patients_listable is True
    assert orthanc.patients_listed == counts.patients
    qido = {q.path: q for q in http.dicomweb}
    assert qido["/dicom-web"].open is True
    assert qido["/dicom-web"].studies == counts.studies
    assert qido["/dicom-web"].lower_bound is False
    assert "patient_name" in {c.value for c in qido["/dicom-web"].phi_categories}
    # The other roots are not served by Orthanc: asked, not open.
    assert not any(q.open for path, q in qido.items() if path != "/dicom-web")
    assert {v.id for v in http.viewers} >= {"orthanc-explorer", "orthanc-dicomweb-client"}
    ids = {f.id for f in report.findings}
    assert {
        "PG-HTTP-ORTHANC-OPEN-API",
        "PG-HTTP-QIDO-ANON",
        "PG-HTTP-NO-TLS",
        "PG-HTTP-VIEWER",
    } <= ids
    assert "PG-HTTP-DEFAULT-CREDENTIALS" not in ids
    assert report.product is not None
    assert (report.product.id, report.product.version) == ("orthanc", system["Version"])
    assert report.product.basis == "http_orthanc_version"
    # Debian 12's Orthanc 1.10.1 is before CVE-2023-33466's fix (1.12.0) and after
    # CVE-2025-0896's (1.5.8): the version from /system decides, matched by version only.
    expected = {
        f"PG-{v.cve}"
        for v in default_data().vulnerabilities_for(report.product)
        if v.surface in SERVER_SURFACES
    }
    assert {i for i in ids if i.startswith("PG-CVE-")} == expected
    if system["Version"] == "1.10.1":
        assert "PG-CVE-2023-33466" in ids
        assert "PG-CVE-2025-0896" not in ids
    for finding in report.findings:
        if finding.id.startswith("PG-CVE-"):
            assert finding.evidence["identified_by"] == "http_orthanc_version"


def test_open_orthanc_qido_paging_is_bounded(
    open_web_orthanc: OrthancPeer, lab_data: LabData
) -> None:
    """Pages of 2 with a budget of 2 pages: a lower bound of 4 studies, never more requests."""
    assert lab_data.counts.studies > 4
    small = replace(OPTIONS, qido_page_size=2, qido_max_pages=2)
    http = scan_web(open_web_orthanc, small).observations.http
    assert http is not None
    qido = next(q for q in http.dicomweb if q.path == "/dicom-web")
    assert (qido.studies, qido.pages, qido.lower_bound) == (4, 2, True)
    paged = [e for e in http.endpoints if e.path.startswith("/dicom-web/studies")]
    assert len(paged) == 2
    # Pages of 3 walk the whole archive and end on the short last page: exact again.
    walk = replace(OPTIONS, qido_page_size=3, qido_max_pages=100)
    http = scan_web(open_web_orthanc, walk).observations.http
    assert http is not None
    qido = next(q for q in http.dicomweb if q.path == "/dicom-web")
    assert (qido.studies, qido.lower_bound) == (lab_data.counts.studies, False)


def test_locked_orthanc_shows_its_realm_and_nothing_else(locked_web_orthanc: OrthancPeer) -> None:
    report = scan_web(locked_web_orthanc)
    http = report.observations.http
    assert http is not None
    assert (http.auth_scheme, http.auth_realm) == ("basic", "Orthanc Secure Area")
    assert http.orthanc is not None and http.orthanc.open is False
    assert http.orthanc.version is None and http.orthanc.studies is None
    assert all(q.status == 401 and not q.open for q in http.dicomweb)
    assert http.viewers == ()
    assert http.default_credentials_tried is False
    ids = {f.id for f in report.findings}
    assert ids == {"PG-HTTP-NO-TLS"}
    finding = next(f for f in report.findings if f.id == "PG-HTTP-NO-TLS")
    assert finding.evidence["basic_auth_in_clear"] is True
    assert report.product is None


def test_default_credentials_only_behind_the_flag_and_only_reported(
    tmp_path_factory: pytest.TempPathFactory, lab_data: LabData
) -> None:
    """An Orthanc whose one login is the docker image's orthanc/orthanc: untried without the
    flag; with it, reported by id, and GET /system is the only request sent with the login."""
    require_tools("Orthanc", "storescu")
    _require_plugin()
    profile = replace(locked_profile(), name="default-login", web=True)
    workdir = tmp_path_factory.mktemp("orthanc-default-login")
    with running_orthanc(profile, workdir, lab_data, http_user=("orthanc", "orthanc")) as peer:
        target = Target(peer.host, peer.http_port, "http")
        without = assess(asyncio.run(probe_http(target, OPTIONS)))
        flagged = replace(OPTIONS, default_credentials=True)
        report = assess(asyncio.run(probe_http(target, flagged)))
    assert without.observations.http is not None
    assert without.observations.http.default_credentials_tried is False
    assert "PG-HTTP-DEFAULT-CREDENTIALS" not in {f.id for f in without.findings}
    http = report.observations.http
    assert http is not None and http.default_credentials_tried is True
    assert [(c.id, c.username, c.path) for c in http.default_credentials] == [
        ("orthanc-docker", "orthanc", "/system")
    ]
    finding = next(f for f in report.findings if f.id == "PG-HTTP-DEFAULT-CREDENTIALS")
    assert finding.evidence["data_read"] is False
    assert finding.severity.value == "critical"
    # Only the login attempt got past the 401s, and it asked for /system.
    answered = [e for e in http.endpoints if e.status is not None and e.status < 400]
    assert [e.path for e in answered] == ["/system"]
    # The version behind the login is not read, so no product or CVE is claimed.
    assert report.product is None


def test_records_validate_and_hold_no_patient_value(
    open_web_orthanc: OrthancPeer, locked_web_orthanc: OrthancPeer, lab_data: LabData
) -> None:
    schema = load_schema()
    sensitive = lab_data.archive.sensitive_values()
    assert len(sensitive) > 10
    for peer in (open_web_orthanc, locked_web_orthanc):
        record = to_record(scan_web(peer))
        jsonschema.validate(record, schema)
        text = json.dumps(record)
        for value in sensitive:
            assert value not in text


def test_orthanc_behind_tls_gets_tls_facts_instead_of_the_transport_finding(
    open_web_orthanc: OrthancPeer, lab_data: LabData, tmp_path: Path
) -> None:
    """HTTPS as deployed in front of Orthanc: Debian's stunnel4 terminating TLS (a self-signed
    certificate, TLS 1.2+) before the open REST API. (Orthanc's own "SslEnabled" in Debian's
    1.10.1 build ends with a segmentation fault on the first TLS connection, so it is not the
    front here.) The https target is named, counted, and judged by its TLS facts."""
    require_tools("stunnel4")
    service = StunnelService("https", CertSpec("orthanc-https.interop.lab", self_signed=True))
    with running_stunnel(tmp_path / "stunnel", open_web_orthanc.http_port, [service]) as front:
        target = Target(front.host, front.ports["https"], "https")
        report = assess(asyncio.run(probe_http(target, OPTIONS)))
        plain = assess(asyncio.run(probe_http(replace(target, transport="http"), OPTIONS)))
    obs = report.observations
    assert obs.tls is True
    assert obs.tls_facts is not None
    assert "1.2" in obs.tls_facts.versions_accepted
    assert obs.tls_facts.certificate is not None and obs.tls_facts.certificate.self_signed
    assert obs.http is not None and obs.http.orthanc is not None and obs.http.orthanc.open
    assert obs.exposure is not None and obs.exposure.studies == lab_data.counts.studies
    ids = {f.id for f in report.findings}
    assert {"PG-HTTP-ORTHANC-OPEN-API", "PG-HTTP-QIDO-ANON", "PG-TLS-CERT-SELF-SIGNED"} <= ids
    assert "PG-HTTP-NO-TLS" not in ids
    jsonschema.validate(to_record(report), load_schema())
    # Plain HTTP to the TLS port: not HTTP, nothing claimed.
    assert plain.observations.http is not None and plain.observations.http.orthanc is None
    assert not any(f.id.startswith("PG-HTTP-") for f in plain.findings)


def test_cli_scans_web_targets_and_reports_them_without_patient_values(
    open_web_orthanc: OrthancPeer,
    locked_web_orthanc: OrthancPeer,
    lab_data: LabData,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`pacsguard scan http://...` (with --default-credentials, which finds nothing here: the
    locked Orthanc's login is random) then `pacsguard report`: web findings and counts reach
    the JSON Lines, the terminal and the HTML, and no synthetic patient value reaches any."""
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "scan.jsonl"
    targets = [
        f"http://{peer.host}:{peer.http_port}" for peer in (open_web_orthanc, locked_web_orthanc)
    ]
    code = main(["scan", *targets, "-o", str(out), "--format", "table", "--default-credentials"])
    assert code == 1
    records = {r["port"]: r for r in map(json.loads, out.read_text().splitlines())}
    opened, locked = records[open_web_orthanc.http_port], records[locked_web_orthanc.http_port]
    assert opened["transport"] == "http" and opened["exposure"]["method"] == "orthanc-rest"
    assert opened["exposure"]["studies"] == lab_data.counts.studies
    assert locked["http"]["auth"] == {"scheme": "basic", "realm": "Orthanc Secure Area"}
    assert locked["http"]["default_credentials"] == {"tried": True, "working": []}
    html = tmp_path / "report.html"
    assert main(["report", str(out), "--html", str(html)]) == 0
    captured = capfd.readouterr()
    assert "PG-HTTP-ORTHANC-OPEN-API" in captured.out
    texts = {
        "jsonl": out.read_text(),
        "html": html.read_text(),
        "stdout": captured.out,
        "stderr": captured.err,
        "log": caplog.text,
    }
    assert "PG-HTTP-ORTHANC-OPEN-API" in texts["html"]
    sensitive = lab_data.archive.sensitive_values()
    for where, text in texts.items():
        for value in sensitive:
            assert value not in text, f"{where} leaks a synthetic patient value"
