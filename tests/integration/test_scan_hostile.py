"""Hostile DICOM servers stay bounded: `total_timeout` is a hard bound, PDUs and messages are
bounded in size, and what was counted before the trouble is kept as a lower bound.

Servers: the scripted SCP (tests/integration/scripted_scp.py) for DIMSE-phase misbehaviour, and
the lab farm's hostile profiles for the association phase. Read timeouts are set far above the
total budget, so that only a hard total bound can end these probes in time; elapsed-time bounds
are generous (the budget plus two seconds) for a loaded machine.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
import tracemalloc
from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset

from pacsguard.cli import main
from pacsguard.dicom.client import Timeouts
from pacsguard.dicom.command import CommandField
from pacsguard.dicom.dimse import DimseMessage
from pacsguard.lab.profiles import Profile, plan_farm
from pacsguard.scan.model import HostReport, LowerBoundReason, Observations, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse
from pacsguard.scan.scheduler import Limits, run_scan

from .conftest import RunningFarm
from .scripted_scp import LOOPBACK, Peer, scripted_scp

PENDING = 0xFF00
BUDGET = 1.0
SLACK = 2.0
#: Read timeout far above the budget: without a hard total bound, a probe would wait for it.
PATIENT = ProbeOptions(timeouts=Timeouts(connect=5.0, read=30.0), total_timeout=BUDGET)


def study(n: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "PGTEST0"
    ds.StudyInstanceUID = f"2.25.{n}"
    ds.NumberOfStudyRelatedSeries = 1
    ds.NumberOfStudyRelatedInstances = 2
    return ds


def timed_probe(
    behaviour: Callable[[Peer], object], options: ProbeOptions = PATIENT
) -> tuple[float, Observations, list[Peer]]:
    async def go() -> tuple[float, Observations, list[Peer]]:
        async with scripted_scp(behaviour) as scp:  # type: ignore[arg-type]
            started = time.monotonic()
            obs = await probe_dimse(Target(LOOPBACK, scp.port), options)
            return time.monotonic() - started, obs, scp.peers

    return asyncio.run(go())


async def until_find(peer: Peer) -> DimseMessage | None:
    """Answer C-ECHO; return the first C-FIND-RQ (or None if the requestor left)."""
    while (message := await peer.receive()) is not None:
        if message.field == CommandField.C_FIND_RQ:
            return message
        await peer.answer_echo(message)
    return None


async def stall_after_one_answer(peer: Peer) -> None:
    message = await until_find(peer)
    if message is None:
        return
    await peer.send(peer.find_response(message, PENDING, study(1)))
    await asyncio.sleep(3600)  # no final status, no answer to A-RELEASE or A-ABORT


def test_a_server_that_stalls_mid_answer_is_cut_at_the_total_timeout() -> None:
    elapsed, obs, _ = timed_probe(stall_after_one_answer)
    assert elapsed < BUDGET + SLACK
    assert obs.error == f"total time budget of {BUDGET:g}s exhausted"
    assert obs.exposure is not None
    assert (obs.exposure.studies, obs.exposure.instances) == (1, 2)  # what came is kept
    assert obs.exposure.lower_bound_reasons == (LowerBoundReason.TIME_BUDGET,)
    assert obs.duration_s < BUDGET + SLACK


async def never_release(peer: Peer) -> None:
    message = await until_find(peer)
    if message is None:
        return
    for n in (1, 2):
        await peer.send(peer.find_response(message, PENDING, study(n)))
    await peer.send(peer.find_response(message, 0x0000))
    await asyncio.sleep(3600)  # ignores A-RELEASE-RQ: the requestor must not wait for it


def test_a_server_that_never_releases_costs_at_most_the_total_timeout() -> None:
    elapsed, obs, _ = timed_probe(never_release)
    assert elapsed < BUDGET + SLACK
    assert obs.exposure is not None
    # Counting had finished: the counts are exact even though the release timed out.
    assert (obs.exposure.studies, obs.exposure.instances) == (2, 4)
    assert obs.exposure.lower_bound is False
    assert obs.error == f"total time budget of {BUDGET:g}s exhausted"


def test_a_server_that_never_releases_costs_one_read_timeout_within_a_larger_budget() -> None:
    options = ProbeOptions(timeouts=Timeouts(connect=5.0, read=0.5), total_timeout=30.0)
    elapsed, obs, _ = timed_probe(never_release, options)
    assert elapsed < 0.5 + SLACK
    assert obs.error is None
    assert obs.exposure is not None and obs.exposure.lower_bound is False


async def trickle(peer: Peer) -> None:
    """Every response arrives one byte at a time, 20 ms apart (each PDU takes seconds)."""
    message = await until_find(peer)
    if message is None:
        return
    data = peer.find_response(message, PENDING, study(1))
    for i in range(len(data)):
        await peer.send(data[i : i + 1])
        await asyncio.sleep(0.02)
    await asyncio.sleep(3600)


def test_slow_pdus_are_cut_at_the_total_timeout() -> None:
    elapsed, obs, _ = timed_probe(trickle)
    assert elapsed < BUDGET + SLACK
    assert obs.exposure is not None
    assert obs.exposure.lower_bound_reasons == (LowerBoundReason.TIME_BUDGET,)


def test_a_slow_pdu_is_cut_at_the_read_timeout() -> None:
    options = ProbeOptions(timeouts=Timeouts(connect=5.0, read=0.5), total_timeout=30.0)
    elapsed, obs, _ = timed_probe(trickle, options)
    assert elapsed < 0.5 + SLACK
    assert obs.exposure is not None
    assert obs.exposure.lower_bound_reasons == (LowerBoundReason.INTERRUPTED,)
    assert obs.error is None


async def huge_pdu(peer: Peer) -> None:
    """A P-DATA-TF announcing 4 GB, a few bytes of it, then silence."""
    if await until_find(peer) is None:
        return
    await peer.send(struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 10)
    await asyncio.sleep(3600)


async def endless_message(peer: Peer) -> None:
    """A C-FIND-RSP whose identifier never gets its last fragment: 16 KiB PDUs, forever."""
    message = await until_find(peer)
    if message is None:
        return
    whole = peer.find_response(message, PENDING, study(1))
    command_length = 6 + int.from_bytes(whole[2:6], "big")
    await peer.send(whole[:command_length])  # the command set, complete
    fragment = struct.pack(">BBIIBB", 0x04, 0, 16384 + 6, 16384 + 2, message.context_id, 0x00)
    fragment += b"\x00" * 16384  # data set fragment, never marked last
    try:
        while True:
            await peer.send(fragment)
            await asyncio.sleep(0)
    except (ConnectionError, RuntimeError):
        return


@pytest.mark.parametrize("behaviour", [huge_pdu, endless_message], ids=["4-GB-PDU", "endless"])
def test_huge_pdus_and_messages_are_refused_in_bounded_memory(
    behaviour: Callable[[Peer], object],
) -> None:
    tracemalloc.start()
    try:
        elapsed, obs, _ = timed_probe(behaviour)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < BUDGET + SLACK
    assert obs.exposure is not None
    assert obs.exposure.lower_bound_reasons == (LowerBoundReason.INTERRUPTED,)
    assert any("counting interrupted" in note for note in obs.exposure.notes)
    # The 1 MiB PDU bound and 4 MiB message bound, with room for the copies that make them.
    assert peak < 24 * 1024 * 1024


@pytest.mark.parametrize(
    "profile", [Profile.HOSTILE_SILENT, Profile.HOSTILE_HUGE_PDU, Profile.HOSTILE_CLOSE_MID_PDU]
)
def test_lab_hostile_hosts_cost_at_most_the_total_timeout(
    running_farm: type[RunningFarm], profile: Profile
) -> None:
    lab = running_farm(plan_farm(1, base_address="127.78.9.1", port=0, seed=3, profile=profile))
    host = lab.plan.hosts[0]
    started = time.monotonic()
    obs = asyncio.run(probe_dimse(Target(host.address, host.port), PATIENT))
    assert time.monotonic() - started < BUDGET + SLACK
    assert obs.dicom is False
    assert obs.reachable is True
    assert obs.exposure is None
    if profile is Profile.HOSTILE_SILENT:  # cut by the total budget, not the 30 s read timeout
        assert obs.error == f"total time budget of {BUDGET:g}s exhausted"
        assert [(a.outcome.value, a.reason) for a in obs.attempts] == [
            ("silent", "silent-after-connect")
        ]


def test_scan_command_honours_total_timeout_as_a_hard_bound(
    running_farm: type[RunningFarm], capsys: pytest.CaptureFixture[str]
) -> None:
    lab = running_farm(
        plan_farm(1, base_address="127.78.9.11", port=0, seed=3, profile=Profile.HOSTILE_SILENT)
    )
    host = lab.plan.hosts[0]
    assert main(["scan", "--help"]) == 0  # imports done before the clock starts
    capsys.readouterr()
    started = time.monotonic()
    code = main(
        [
            "scan",
            host.address,
            "-p",
            str(host.port),
            "--read-timeout",
            "30",
            "--total-timeout",
            "1",
            "--fail-on",
            "critical",
        ]
    )
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 1.0 + SLACK
    assert '"error":"total time budget of 1s exhausted"' in capsys.readouterr().out


def test_a_tls_handshake_that_stalls_costs_at_most_the_total_timeout() -> None:
    """DICOM over TLS to a server that accepts TCP and never answers the ClientHello."""

    async def go() -> tuple[float, Observations]:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(65536)  # the ClientHello, unanswered
                await asyncio.sleep(3600)
            finally:
                writer.close()

        server = await asyncio.start_server(mute, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # never reached: the handshake stalls first
        options = ProbeOptions(
            timeouts=Timeouts(connect=30.0, read=30.0), total_timeout=BUDGET, tls=context
        )
        try:
            started = time.monotonic()
            obs = await probe_dimse(Target(LOOPBACK, port), options)
            return time.monotonic() - started, obs
        finally:
            server.close()
            await server.wait_closed()

    elapsed, obs = asyncio.run(go())
    assert elapsed < BUDGET + SLACK
    assert obs.tls is True
    assert obs.error == f"total time budget of {BUDGET:g}s exhausted"
    assert [(a.outcome.value, a.reason) for a in obs.attempts] == [
        ("timeout", "no TLS connection within the total time budget")
    ]
    assert obs.exposure is None


def test_the_scheduler_cancels_a_probe_that_overruns_its_target_timeout() -> None:
    """A backstop for probers that do not bound themselves: here the probe's own budget (30 s)
    is longer than the scheduler's (1 s), against a server that stalls mid-answer."""
    lenient = ProbeOptions(timeouts=Timeouts(connect=5.0, read=30.0), total_timeout=30.0)

    async def go() -> tuple[float, list[HostReport]]:
        async with scripted_scp(stall_after_one_answer) as scp:  # type: ignore[arg-type]
            started = time.monotonic()
            reports = [
                report
                async for report in run_scan(
                    [Target(LOOPBACK, scp.port)],
                    lambda target: probe_dimse(target, lenient),
                    Limits(concurrency=4, target_timeout=BUDGET),
                )
            ]
            return time.monotonic() - started, reports

    elapsed, reports = asyncio.run(go())
    assert elapsed < BUDGET + SLACK
    [report] = reports
    assert (
        report.observations.error
        == f"probe cancelled after {BUDGET:g}s: it overran its own time budget"
    )
