"""The scanner against the lab farm: every verdict and count equals the ground truth."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pacsguard.cli import main
from pacsguard.dicom.client import Timeouts
from pacsguard.lab.profiles import Profile, plan_farm
from pacsguard.lab.synth import generate_archive
from pacsguard.lab.truth import farm_truth
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.scan.model import HostReport, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse
from pacsguard.scan.scheduler import Limits, run_scan

from .conftest import RunningFarm

# A farm host builds its synthetic archive on its first C-FIND, on the farm's one loop: on a
# loaded two-core machine other hosts can then wait more than a second for an answer.
FAST = ProbeOptions(timeouts=Timeouts(connect=2.0, read=3.0), total_timeout=30.0)


def scan(targets: list[Target], options: ProbeOptions = FAST) -> dict[str, HostReport]:
    async def go() -> dict[str, HostReport]:
        out = {}
        async for report in run_scan(
            targets, lambda t: probe_dimse(t, options), Limits(concurrency=64)
        ):
            out[report.observations.target.host] = report
        return out

    return asyncio.run(go())


def truth_by_host(plan: Any) -> dict[str, dict[str, Any]]:
    return {h["address"]: h for h in farm_truth(plan)["hosts"]}


def test_scan_matches_ground_truth_for_every_profile(running_farm: type[RunningFarm]) -> None:
    lab = running_farm(plan_farm(36, base_address="127.78.1.1", port=0, seed=7))
    truth = truth_by_host(lab.plan)
    assert {h["profile"] for h in truth.values()} == {
        p.value for p in Profile if p.tls is None and not p.honeypot and not p.other_service
    }
    reports = scan([Target(h.address, h.port) for h in lab.plan.hosts])
    schema = load_schema()
    for host, expected in truth.items():
        report = reports[host]
        obs = report.observations
        record = to_record(report)
        jsonschema.validate(record, schema)
        context = f"{host} ({expected['profile']})"
        assert obs.dicom == expected["expected_dicom"], context
        if expected["accepts_any_called_ae"] is not None:
            assert obs.any_called_ae_accepted == expected["accepts_any_called_ae"], context
        if expected["calling_ae_checked"] is not None:
            assert obs.calling_ae_checked == expected["calling_ae_checked"], context
        if expected["profile"] == Profile.CALLED_AE_CHECK:
            assert obs.accepted_called_aets == (expected["ae_title"],), context
        if expected["query_exposed"]:
            assert obs.exposure is not None, context
            counts = {
                "patients": obs.exposure.patients,
                "studies": obs.exposure.studies,
                "series": obs.exposure.series,
                "instances": obs.exposure.instances,
            }
            assert counts == expected["exposed_counts"], context
            assert obs.exposure.lower_bound is False, context
            assert sorted(c.value for c in obs.exposure.phi_categories) == sorted(
                expected["phi_categories"]
            ), context
            ids = {f.id for f in report.findings}
            assert {"PG-DIMSE-ANON-FIND", "PG-DIMSE-PHI-EXPOSED"} <= ids, context
        else:
            assert obs.exposure is None or obs.exposure.studies == 0, context
        if expected["services"]:
            assert set(obs.accepted_services) == set(expected["services"]), context
            assert obs.implementation_version_name == expected["implementation_version_name"]
        if expected["profile"].startswith("hostile"):
            assert obs.anomalies, context
            assert report.findings == (), context
            # Bounded by our timeouts, not by the host (which holds on for 30 s): a plaintext
            # attempt, then a TLS handshake attempt (no DICOM answer may hide TLS).
            assert obs.duration_s < 2 * (FAST.timeouts.connect + FAST.timeouts.read) + 2, context


def test_query_budget_marks_counts_as_lower_bounds(running_farm: type[RunningFarm]) -> None:
    lab = running_farm(
        plan_farm(1, base_address="127.78.2.1", port=0, seed=3, profile=Profile.OPEN_NOCOUNTS)
    )
    host = lab.plan.hosts[0]
    expected = truth_by_host(lab.plan)[host.address]["exposed_counts"]
    from pacsguard.scan.counting import CountBudget

    tight = ProbeOptions(timeouts=FAST.timeouts, budget=CountBudget(max_queries=2))
    report = scan([Target(host.address, host.port)], tight)[host.address]
    exposure = report.observations.exposure
    assert exposure is not None
    assert exposure.lower_bound is True
    assert exposure.queries == 2
    assert exposure.studies == expected["studies"]
    assert exposure.instances < expected["instances"]
    assert any("at least" in f.title for f in report.findings)
    # The full budget on the same host gets the exact counts through SERIES/IMAGE fallback.
    full = scan([Target(host.address, host.port)])[host.address].observations.exposure
    assert full is not None
    assert (full.series, full.instances, full.lower_bound) == (
        expected["series"],
        expected["instances"],
        False,
    )


def test_cli_output_never_contains_synthetic_patient_values(
    running_farm: type[RunningFarm],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan = plan_farm(12, base_address="127.78.3.1", port=0, seed=11, profile=Profile.OPEN)
    lab = running_farm(plan)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "scan.jsonl"
    targets = [f"{h.address}:{h.port}" for h in lab.plan.hosts]
    code = main(["scan", *targets, "-o", str(out), "--format", "table", "--read-timeout", "2"])
    assert code == 1  # findings present
    captured = capfd.readouterr()
    sensitive: set[str] = set()
    for spec in lab.plan.hosts:
        sensitive |= generate_archive(spec.seed, spec.patients).sensitive_values()
    assert len(sensitive) > 20
    texts = {
        "jsonl": out.read_text(),
        "stdout": captured.out,
        "stderr": captured.err,
        "log": caplog.text,
    }
    records = [json.loads(line) for line in texts["jsonl"].splitlines()]
    assert len(records) == 12
    assert sum(r["exposure"]["studies"] for r in records) > 0
    for where, text in texts.items():
        for value in sensitive:
            assert value not in text, f"{where} leaks a synthetic patient value"


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "127.0.0.0/8"]) == 2
    assert "allow-large-scope" in capsys.readouterr().err
    assert main(["scan", "127.0.0.1", "-p", "99999"]) == 2
    assert main(["scan", "not a host"]) == 2
    assert main(["scan", "--no-such-flag"]) == 2


def test_closed_ports_are_clean_and_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    # 127.78.9.0/30 has nothing listening: refused connections, no findings.
    assert main(["scan", "127.78.9.0/30", "-p", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line)
        assert record["reachable"] is False
        assert record["association"]["status"] == "refused"
