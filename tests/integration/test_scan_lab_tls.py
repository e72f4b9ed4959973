"""The scanner against the lab's TLS profiles: DICOM found behind TLS, TLS facts as in the truth."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import jsonschema
from rich.console import Console

from pacsguard.dicom.client import Timeouts
from pacsguard.lab.certificates import CertSpec
from pacsguard.lab.profiles import TLS_OFFERS, Profile, plan_farm
from pacsguard.lab.truth import farm_truth
from pacsguard.lab.verify import compare
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.report.table import render_table
from pacsguard.scan.model import HostReport, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse
from pacsguard.scan.scheduler import Limits, run_scan
from pacsguard.scan.tls import observing_context

from .conftest import RunningFarm

OPTIONS = ProbeOptions(timeouts=Timeouts(connect=3.0, read=5.0), total_timeout=60.0)
EXPECTED_TLS_FINDINGS = {
    Profile.OPEN_TLS: set(),
    Profile.TLS_LEGACY: {"PG-TLS-LEGACY-VERSION"},
    Profile.TLS_EXPIRED: {"PG-TLS-CERT-EXPIRED", "PG-TLS-CERT-SELF-SIGNED"},
    Profile.TLS_WEAK_CERT: {"PG-TLS-WEAK-KEY", "PG-TLS-WEAK-SIGNATURE", "PG-TLS-CERT-SELF-SIGNED"},
    Profile.TLS_MUTUAL: set(),
}


def scan(targets: list[Target], options: ProbeOptions = OPTIONS) -> list[HostReport]:
    async def go() -> list[HostReport]:
        return [
            r
            async for r in run_scan(
                targets, lambda t: probe_dimse(t, options), Limits(concurrency=8)
            )
        ]

    return asyncio.run(go())


def test_tls_profiles_match_their_ground_truth(running_farm: type[RunningFarm]) -> None:
    # service-tls is HTTPS, not DICOM: the internet lab's (lab.internet).
    mix = {profile: 1.0 for profile in TLS_OFFERS if not profile.other_service}
    lab = running_farm(plan_farm(len(mix), base_address="127.78.9.1", port=0, seed=3, mix=mix))
    truth = farm_truth(lab.plan)
    reports = scan([Target(h.address, h.port) for h in lab.plan.hosts])
    agreement = compare(reports, truth["hosts"])
    assert agreement.mismatches == ()
    assert agreement.agreeing == len(mix)
    console = Console(record=True, width=200)
    render_table(reports, console)
    text = console.export_text()
    assert text.count("TLS accepted: ANY-SCP") == len(mix) - 1
    assert "TLS: client certificate required" in text
    profiles = {(h.address, h.port): h.profile for h in lab.plan.hosts}
    schema = load_schema()
    for report in reports:
        obs = report.observations
        profile = profiles[(obs.target.host, obs.target.port)]
        jsonschema.validate(to_record(report), schema)
        assert obs.tls_facts is not None and obs.tls is True, profile
        assert obs.target.transport == "dimse-tls"
        assert obs.anomalies == (), profile
        ids = {f.id for f in report.findings}
        assert {i for i in ids if i.startswith("PG-TLS-")} == EXPECTED_TLS_FINDINGS[profile]
        assert "PG-DIMSE-NO-TLS" not in ids
        if profile is Profile.TLS_MUTUAL:
            assert obs.tls_facts.client_certificate.value == "required"
            assert obs.dicom is False and obs.exposure is None
            association = to_record(report)["association"]
            assert (association["status"], association["reason"]) == (
                "not-attempted",
                "tls-client-certificate-required",
            )
        else:
            # The same DICOM probe ran inside TLS: echo and exact counts.
            assert obs.echo_status == 0, profile
            assert obs.exposure is not None and obs.exposure.studies > 0, profile
            assert "PG-DIMSE-ANON-FIND" in ids
            assert all(a.tls for a in obs.attempts if a.outcome.value == "accepted")


def test_mutual_tls_host_lets_a_client_with_a_lab_certificate_in(
    running_farm: type[RunningFarm], tmp_path: Path
) -> None:
    lab = running_farm(
        plan_farm(1, base_address="127.78.9.21", port=0, seed=4, profile=Profile.TLS_MUTUAL)
    )
    ca = lab.farm.ca
    assert ca is not None
    cert, key = ca.issue(CertSpec("auditor", client=True)).write(tmp_path, "client")
    context = observing_context()
    context.load_cert_chain(cert, key)
    host = lab.plan.hosts[0]
    options = ProbeOptions(timeouts=OPTIONS.timeouts, total_timeout=60.0, tls=context)
    (report,) = scan([Target(host.address, host.port)], options)
    assert report.observations.dicom is True
    assert report.observations.echo_status == 0
    assert isinstance(context, ssl.SSLContext)


def test_port_2762_is_tried_inside_tls_first_and_plaintext_after(
    running_farm: type[RunningFarm],
) -> None:
    # Fixed port 2762 on addresses no other test uses (the farm binds the address, not 0.0.0.0).
    tls_lab = running_farm(
        plan_farm(1, base_address="127.78.27.62", port=2762, seed=5, profile=Profile.OPEN_TLS)
    )
    plain_lab = running_farm(
        plan_farm(1, base_address="127.78.27.63", port=2762, seed=5, profile=Profile.OPEN)
    )
    tls_host, plain_host = tls_lab.plan.hosts[0], plain_lab.plan.hosts[0]
    reports = {
        r.observations.target.host: r
        for r in scan([Target(tls_host.address, 2762), Target(plain_host.address, 2762)])
    }
    inside = reports[tls_host.address].observations
    assert inside.attempts and all(a.tls for a in inside.attempts)  # no plaintext request sent
    assert inside.tls_facts is not None and inside.echo_status == 0
    plain = reports[plain_host.address]
    assert plain.observations.tls_facts is None
    assert plain.observations.attempts and not any(a.tls for a in plain.observations.attempts)
    assert plain.observations.echo_status == 0
    assert "PG-DIMSE-NO-TLS" in {f.id for f in plain.findings}
