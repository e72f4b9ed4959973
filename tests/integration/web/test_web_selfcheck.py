"""The start-up self-check probes DICOMweb with the scanner's HTTP tier: a secure archive is
recognised as pacsguard's DICOMweb asking for a token (informational), its TLS facts are
reported, and an archive that answers a stranger's QIDO-RS does not start."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from pacsguard.archive.audit.log import verify
from pacsguard.archive.selfcheck import describe_web, refusal, self_check, web_reports, worst
from pacsguard.scan.model import ClientCertificate, Severity
from tests.integration.serve.conftest import PACSGUARD, TESTER, make_data_dir

from .conftest import USERS, WebArchive, free_ports, start_web


def test_self_check_finds_our_dicomweb_closed_and_reports_tls(web: WebArchive) -> None:
    reports = self_check(web.archive)
    [report] = web_reports(reports)
    assert worst([report]) is Severity.INFO  # (the fixture's plaintext DIMSE port is another)
    assert [(f.id, f.severity) for f in report.findings] == [
        ("PG-HTTP-DICOMWEB-AUTH", Severity.INFO)
    ]
    obs = report.observations
    assert obs.http is not None
    assert (obs.http.auth_scheme, obs.http.auth_realm) == ("bearer", "pacsguard")
    ours = next(q for q in obs.http.dicomweb if q.path == "/")
    assert (ours.status, ours.open, ours.auth_required) == (401, False, True)
    assert ours.product == "pacsguard archive DICOMweb"
    assert not any(q.open or q.auth_required for q in obs.http.dicomweb if q.path != "/")
    facts = obs.tls_facts
    assert facts is not None and facts.certificate is not None
    assert set(facts.versions_accepted) <= {"1.2", "1.3"}
    assert {"1.0", "1.1"} & set(facts.versions_accepted) == set()
    assert facts.client_certificate is ClientCertificate.NOT_REQUESTED
    assert "pacsguard local CA" in facts.certificate.issuer
    assert refusal(reports, "secure") is None
    line = describe_web(report)
    assert "anonymous QIDO-RS refused (401" in line
    assert "authentication required" in line
    assert "accepts TLS 1.2" in line
    # Tokenless requests are not counted as failed logins: a token still works at once, and
    # every request of the probe is in the intact audit chain.
    with web.client("admin") as client:
        assert client.get("/studies", headers={"Accept": "application/dicom+json"}).json() == []
    assert verify(web.archive.settings.audit.log_path).ok


def test_self_check_refuses_an_archive_that_answers_strangers(tmp_path: Path) -> None:
    """An [[ae]] trusted by the address the probe comes from lets tokenless HTTP in: the
    scanner sees an open QIDO-RS, and the secure profile refuses to run with it."""
    web = start_web(tmp_path, tester=True)
    try:
        reports = self_check(web.archive)
    finally:
        web.archive.stop()
    [report] = web_reports(reports)
    assert "PG-HTTP-QIDO-ANON" in {f.id for f in report.findings}
    assert "PG-HTTP-DICOMWEB-AUTH" not in {f.id for f in report.findings}
    reason = refusal(reports, "secure")
    assert reason is not None
    assert "answered a QIDO-RS search without a token (0 studies visible)" in reason
    assert "ANSWERED" in describe_web(report)


def test_lab_profile_dicomweb_is_found_open_and_is_not_refused(tmp_path: Path) -> None:
    web = start_web(tmp_path, profile="lab")
    try:
        reports = self_check(web.archive)
    finally:
        web.archive.stop()
    found = {f.id for r in web_reports(reports) for f in r.findings}
    assert "PG-HTTP-QIDO-ANON" in found
    assert refusal(reports, "lab") is None
    assert refusal(reports, "secure") is not None


def _serve(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    web_port, dimse_port = free_ports(2)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                PACSGUARD, "serve", "--data-dir", str(data),
                "--port", str(dimse_port), "--web-port", str(web_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, web_port


def _wait_for(proc: subprocess.Popen[bytes], log: Path, text: str) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen = " ".join(log.read_text(encoding="utf-8").split())
        if text in seen or proc.poll() is not None:
            return seen
        time.sleep(0.2)
    return " ".join(log.read_text(encoding="utf-8").split())


def test_serve_self_check_reports_the_https_side(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "data", USERS)
    log = tmp_path / "serve.log"
    proc, web_port = _serve(data, log)
    try:
        seen = _wait_for(proc, log, "ready")
        assert proc.poll() is None, seen[-3000:]
        assert "ready" in seen
        assert "self-check (scanned as a stranger): nothing above informational" in seen
        assert (
            f"self-check https://127.0.0.1:{web_port}: anonymous QIDO-RS refused (401, bearer "
            'realm "pacsguard": pacsguard archive DICOMweb, authentication required)'
        ) in seen
        assert "accepts TLS 1.2, 1.3 (refuses 1.0, 1.1)" in seen
        assert "from CN=pacsguard local CA" in seen
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def test_serve_does_not_start_when_dicomweb_answers_strangers(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "data", TESTER + USERS)
    log = tmp_path / "serve.log"
    proc, _ = _serve(data, log)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("serve kept running: " + log.read_text()[-3000:])
    seen = " ".join(log.read_text(encoding="utf-8").split())
    assert code == 2, seen[-3000:]
    assert "answered a QIDO-RS search without a token" in seen
    assert "ready" not in seen
