"""The internet lab served for real: banners, tarpits, closed addresses, the scanner against the
truth, and `pacsguard lab serve --internet` with its MMDB files.

A /20 (4,096 addresses, about 150 listening) on ports bound as 0, so tests run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import maxminddb
import pytest

from pacsguard.dicom import uids
from pacsguard.dicom.client import Timeouts
from pacsguard.dicom.ul import encode_associate_rq, propose
from pacsguard.lab.banners import SSH_IDENTIFICATION, SSH_INVALID
from pacsguard.lab.internet import internet_truth, plan_internet
from pacsguard.scan.model import HostReport, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse
from pacsguard.scan.scheduler import Limits, run_scan

from .conftest import RunningFarm

NETWORK = "127.93.0.0/20"
FAST = ProbeOptions(timeouts=Timeouts(connect=2.0, read=3.0), total_timeout=30.0)


@pytest.fixture
def internet(running_farm: type[RunningFarm]) -> tuple[RunningFarm, dict[str, Any]]:
    plan = plan_internet(NETWORK, seed=11, ports=(0,))
    lab = running_farm(plan.farm)
    return lab, internet_truth(plan.with_farm(lab.plan))


def _first(truth: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(h for h in truth["hosts"] if h["kind"] == kind)


async def _exchange(
    host: dict[str, Any], send: bytes | None, *, tls: bool = False, wait: float = 5.0
) -> bytes:
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host["address"], host["port"], ssl=context)
    try:
        if send is not None:
            writer.write(send)
            await writer.drain()
        received = b""
        async with asyncio.timeout(wait):
            while chunk := await reader.read(4096):
                received += chunk
        return received
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        async with asyncio.timeout(5):
            await writer.wait_closed()


def _associate_rq() -> bytes:
    return encode_associate_rq("ANY-SCP", "PACSGUARD", propose([uids.VERIFICATION]), 16384)


def test_other_services_answer_in_their_own_protocol(
    internet: tuple[RunningFarm, dict[str, Any]],
) -> None:
    _, truth = internet
    http, ssh, tls = _first(truth, "http"), _first(truth, "ssh"), _first(truth, "tls")

    async def go() -> None:
        page = await _exchange(http, b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
        assert page.startswith(b"HTTP/1.1 404 Not Found") and b"<html>" in page
        dicom = await _exchange(http, _associate_rq())
        assert dicom.startswith(b"HTTP/1.1 400 Bad Request")
        banner = await _exchange(ssh, _associate_rq())
        assert banner == SSH_IDENTIFICATION + SSH_INVALID
        https = await _exchange(tls, b"GET /wado HTTP/1.1\r\nHost: lab\r\n\r\n", tls=True)
        assert https.startswith(b"HTTP/1.1 404 Not Found")

    asyncio.run(go())


def test_tls_service_presents_a_self_signed_certificate(
    internet: tuple[RunningFarm, dict[str, Any]],
) -> None:
    _, truth = internet
    tls = _first(truth, "tls")

    async def go() -> tuple[dict[str, Any], ...]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection(tls["address"], tls["port"], ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        await _close(writer)
        return (der,)

    (der,) = asyncio.run(go())
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    assert cert.issuer == cert.subject


def test_tarpits_accept_and_never_answer_closed_addresses_refuse(
    internet: tuple[RunningFarm, dict[str, Any]],
) -> None:
    _, truth = internet
    tarpit = _first(truth, "tarpit")
    listening = {h["address"] for h in truth["hosts"]}
    closed = next(
        f"127.93.{third}.{fourth}"
        for third in range(16)
        for fourth in range(1, 255)
        if f"127.93.{third}.{fourth}" not in listening
    )

    async def go() -> None:
        reader, writer = await asyncio.open_connection(tarpit["address"], tarpit["port"])
        writer.write(_associate_rq())
        await writer.drain()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await reader.read(1)
        await _close(writer)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(closed, tarpit["port"])

    asyncio.run(go())


def _scan(targets: list[Target]) -> dict[str, HostReport]:
    async def go() -> dict[str, HostReport]:
        out = {}
        async for report in run_scan(
            targets, lambda t: probe_dimse(t, FAST), Limits(concurrency=256)
        ):
            out[report.observations.target.host] = report
        return out

    return asyncio.run(go())


def test_scanner_dicom_verdicts_match_the_truth(
    internet: tuple[RunningFarm, dict[str, Any]],
) -> None:
    _, truth = internet
    reports = _scan([Target(h["address"], h["port"]) for h in truth["hosts"]])
    assert len(reports) == truth["listening"]
    wrong = [
        (h["address"], h["profile"])
        for h in truth["hosts"]
        if reports[h["address"]].observations.dicom != h["expected_dicom"]
    ]
    assert wrong == []
    # The identical-configuration clusters answer the same counts on every member.
    for members in truth["clusters"].values():
        exposures = {
            repr(reports[a].observations.exposure and reports[a].observations.exposure.studies)
            for a in members
        }
        assert len(exposures) == 1


def test_cli_serves_the_internet_lab_with_mmdb_files(tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    command = [
        sys.executable, "-c", "from pacsguard.cli import main; raise SystemExit(main())",
        "lab", "serve", "--internet", "--base", "127.93.16.0/20", "--internet-ports", "0",
        "--seed", "4", "--truth", str(truth_path),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not truth_path.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        truth = json.loads(truth_path.read_text())
        assert truth["network"] == "127.93.16.0/20" and truth["addresses"] == 4096
        host = _first(truth, "http")
        page = asyncio.run(_exchange(host, b"GET / HTTP/1.1\r\n\r\n"))
        assert page.startswith(b"HTTP/1.1 404")
        with maxminddb.open_database(str(tmp_path / "GeoLite2-ASN.mmdb")) as asn:
            record = asn.get(host["address"])
        assert record == {
            "autonomous_system_number": host["asn"],
            "autonomous_system_organization": host["as_organization"],
        }
        assert (tmp_path / "GeoLite2-Country.mmdb").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert f"truth: {truth_path}" in output and "GeoLite2-Country.mmdb" in output


def test_cli_refuses_an_internet_lab_outside_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pacsguard.cli import main

    outside = "10.80.0.0/16"  # refused: the lab binds loopback only, nothing is sent
    code = main(["lab", "serve", "--internet", "--base", outside, "--truth", str(tmp_path)])
    assert code == 2
    assert "127.0.0.0/8" in capsys.readouterr().err
