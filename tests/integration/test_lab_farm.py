"""The lab farm over real loopback sockets: profiles, counts against the truth, hostile hosts,
robustness against garbage, a thousand hosts in one process, dcmtk and the CLI.

Every farm binds port 0 on its own 127.x addresses, so tests can run in parallel (xdist).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE

from pacsguard.cli import main
from pacsguard.dicom import uids
from pacsguard.dicom.client import Association, Timeouts, request_association
from pacsguard.dicom.command import CommandField
from pacsguard.dicom.dimse import MessageAssembler, encode_dataset, encode_message
from pacsguard.dicom.ul import (
    MAX_ASSOCIATION_PDU,
    AssociationAccepted,
    AssociationRejected,
    decode_associate_answer,
    encode_associate_rq,
    propose,
    read_pdu,
)
from pacsguard.errors import MalformedPdu, PduTooLarge, PeerClosed
from pacsguard.lab.farm import Farm, Limits
from pacsguard.lab.profiles import FarmPlan, HostSpec, Profile, plan_farm
from pacsguard.lab.synth import build_dataset, generate_archive
from pacsguard.lab.truth import farm_truth

from .conftest import RunningFarm

CONTEXTS = propose(
    [
        uids.VERIFICATION,
        uids.STUDY_ROOT_FIND,
        uids.PATIENT_ROOT_FIND,
        uids.SECONDARY_CAPTURE_STORAGE,
        uids.CT_IMAGE_STORAGE,
        uids.MR_IMAGE_STORAGE,
    ]
)
FAST = Timeouts(connect=2.0, read=2.0)
#: Short holds so that hostile hosts and idle peers do not slow the suite down.
TEST_LIMITS = Limits(association_timeout=1.0, idle_timeout=2.0, hostile_hold=2.0)


def run(
    coro_fn: Callable[[Farm], Awaitable[None]], plan: FarmPlan, limits: Limits = TEST_LIMITS
) -> Farm:
    """Serve `plan` in this thread's event loop while `coro_fn` talks to it; return the farm."""

    async def go() -> Farm:
        async with Farm(plan, limits=limits) as farm:
            await coro_fn(farm)
        return farm

    return asyncio.run(go())


async def associate(
    host: HostSpec, *, called: str | None = None, calling: str = "PACSGUARD"
) -> tuple[AssociationAccepted | AssociationRejected, Association | None]:
    return await request_association(
        host.address,
        host.port,
        calling_ae=calling,
        called_ae=called or host.ae_title,
        contexts=CONTEXTS,
        timeouts=FAST,
    )


@contextlib.asynccontextmanager
async def associated(host: HostSpec) -> AsyncIterator[tuple[AssociationAccepted, Association]]:
    answer, assoc = await associate(host)
    assert isinstance(answer, AssociationAccepted), answer
    assert assoc is not None
    try:
        yield answer, assoc
    finally:
        await assoc.release()


def query(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


async def find_all(
    answer: AssociationAccepted, assoc: Association, sop_class: str, identifier: Dataset
) -> tuple[int, list[Dataset]]:
    context = answer.accepted_context(sop_class)
    assert context is not None
    found: list[Dataset] = []
    statuses: list[int] = []
    async for status, ds in assoc.find(context, identifier):
        statuses.append(status)
        if ds is not None:
            found.append(ds)
    return statuses[-1], found


def truth_of(farm: Farm) -> dict[str, dict[str, Any]]:
    return {h["address"]: h for h in farm_truth(farm.plan)["hosts"]}


# -- association policy ----------------------------------------------------------------------


def merged(*plans: FarmPlan) -> FarmPlan:
    """One plan from several single-profile ones, hosts renumbered."""
    hosts = [h for plan in plans for h in plan.hosts]
    return FarmPlan(
        seed=plans[0].seed,
        hosts=tuple(dataclasses.replace(h, index=i) for i, h in enumerate(hosts)),
    )


def test_ae_checks_reject_with_the_right_reasons() -> None:
    plan = merged(
        plan_farm(2, base_address="127.80.1.1", port=0, profile=Profile.CALLED_AE_CHECK),
        plan_farm(2, base_address="127.80.1.11", port=0, profile=Profile.CALLING_AE_ALLOWLIST),
    )

    async def talk(farm: Farm) -> None:
        called_check, _, allowlist, _ = farm.plan.hosts
        answer, assoc = await associate(called_check, called="ANY-SCP")
        assert assoc is None
        assert isinstance(answer, AssociationRejected)
        assert (answer.result, answer.source, answer.reason) == (1, 1, 7)
        async with associated(called_check) as (accepted, session):
            context = accepted.accepted_context(uids.VERIFICATION)
            assert context is not None
            assert await session.echo(context) == 0
        answer, assoc = await associate(allowlist)  # right called AE, unknown calling AE
        assert isinstance(answer, AssociationRejected)
        assert (answer.result, answer.source, answer.reason) == (1, 1, 3)
        answer, assoc = await associate(allowlist, calling=allowlist.calling_allowlist[0])
        assert isinstance(answer, AssociationAccepted)
        assert assoc is not None
        await assoc.release()

    farm = run(talk, plan)
    assert farm.stats.associations_rejected == 2
    assert farm.stats.internal_errors == 0


def test_open_hosts_echo_and_study_counts_equal_the_truth() -> None:
    plan = plan_farm(6, base_address="127.80.2.1", port=0, seed=31, profile=Profile.OPEN)

    async def talk(farm: Farm) -> None:
        truth = truth_of(farm)
        for host in farm.plan.hosts:
            expected = truth[host.address]["exposed_counts"]
            async with associated(host) as (answer, assoc):
                assert answer.implementation_version_name == host.stack.implementation_version_name
                assert answer.max_pdu == host.stack.max_pdu
                echo = answer.accepted_context(uids.VERIFICATION)
                assert echo is not None
                assert await assoc.echo(echo) == 0x0000
                status, studies = await find_all(
                    answer,
                    assoc,
                    uids.STUDY_ROOT_FIND,
                    query(
                        "STUDY",
                        PatientID="",
                        StudyInstanceUID="",
                        NumberOfStudyRelatedSeries="",
                        NumberOfStudyRelatedInstances="",
                    ),
                )
                assert status == 0x0000
                assert len(studies) == expected["studies"]
                assert len({ds.PatientID for ds in studies}) == expected["patients"]
                assert (
                    sum(int(ds.NumberOfStudyRelatedSeries) for ds in studies)
                    == (expected["series"])
                )
                assert (
                    sum(int(ds.NumberOfStudyRelatedInstances) for ds in studies)
                    == (expected["instances"])
                )
                status, patients = await find_all(
                    answer,
                    assoc,
                    uids.PATIENT_ROOT_FIND,
                    query("PATIENT", PatientID="", NumberOfPatientRelatedInstances=""),
                )
                assert status == 0x0000
                assert len(patients) == expected["patients"]
                assert (
                    sum(int(ds.NumberOfPatientRelatedInstances) for ds in patients)
                    == (expected["instances"])
                )

    farm = run(talk, plan)
    assert farm.stats.echoes == 6
    assert farm.stats.releases == 6
    assert farm.stats.internal_errors == 0


def test_nocounts_hosts_need_series_and_image_queries() -> None:
    plan = plan_farm(3, base_address="127.80.3.1", port=0, seed=5, profile=Profile.OPEN_NOCOUNTS)

    async def talk(farm: Farm) -> None:
        truth = truth_of(farm)
        for host in farm.plan.hosts:
            expected = truth[host.address]["exposed_counts"]
            async with associated(host) as (answer, assoc):
                _, studies = await find_all(
                    answer,
                    assoc,
                    uids.STUDY_ROOT_FIND,
                    query("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances=""),
                )
                assert len(studies) == expected["studies"]
                assert all("NumberOfStudyRelatedInstances" not in ds for ds in studies)
                series = instances = 0
                for study in studies:
                    uid = study.StudyInstanceUID
                    _, found = await find_all(
                        answer,
                        assoc,
                        uids.STUDY_ROOT_FIND,
                        query("SERIES", StudyInstanceUID=uid, SeriesInstanceUID=""),
                    )
                    series += len(found)
                    _, found = await find_all(
                        answer,
                        assoc,
                        uids.STUDY_ROOT_FIND,
                        query("IMAGE", StudyInstanceUID=uid, SOPInstanceUID=""),
                    )
                    instances += len(found)
                assert (series, instances) == (expected["series"], expected["instances"])

    run(talk, plan)


def test_bad_query_levels_fail_and_the_association_goes_on() -> None:
    plan = plan_farm(1, base_address="127.80.4.1", port=0, profile=Profile.OPEN)

    async def talk(farm: Farm) -> None:
        async with associated(farm.plan.hosts[0]) as (answer, assoc):
            for root, level in [
                (uids.STUDY_ROOT_FIND, "PATIENT"),
                (uids.STUDY_ROOT_FIND, "NONSENSE"),
                (uids.PATIENT_ROOT_FIND, ""),
            ]:
                status, found = await find_all(answer, assoc, root, query(level, PatientID=""))
                assert (status, found) == (0xA900, [])
            status, found = await find_all(
                answer, assoc, uids.STUDY_ROOT_FIND, query("STUDY", PatientID="NO-SUCH-ID")
            )
            assert (status, found) == (0x0000, [])

    run(talk, plan)


async def store_one(host: HostSpec, ds: Dataset) -> int:
    """C-STORE one instance with the project's codec (the client has no store of its own)."""
    contexts = propose([str(ds.SOPClassUID)])
    reader, writer = await asyncio.open_connection(host.address, host.port)
    try:
        writer.write(encode_associate_rq("PACSGUARD", host.ae_title, contexts, 65536))
        answer = decode_associate_answer(await read_pdu(reader, MAX_ASSOCIATION_PDU), contexts)
        assert isinstance(answer, AssociationAccepted)
        context = answer.contexts[0]
        assert context.accepted and context.transfer_syntax
        request = C_STORE()
        request.MessageID = 7
        request.AffectedSOPClassUID = ds.SOPClassUID
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 2
        request.DataSet = encode_dataset(ds, context.transfer_syntax)
        writer.write(encode_message(request, context.context_id, answer.max_pdu or 0, request=True))
        assembler = MessageAssembler()
        while (message := assembler.feed(await read_pdu(reader, 1 << 20))) is None:
            pass
        assert message.field == CommandField.C_STORE_RSP
        status = message.command.status
        assert status is not None
        return status
    finally:
        writer.close()
        await writer.wait_closed()


def test_store_only_refuses_find_and_counts_stored_instances() -> None:
    plan = plan_farm(1, base_address="127.80.5.1", port=0, profile=Profile.STORE_ONLY)
    archive = generate_archive(3, 1)
    instance = build_dataset(*next(archive.walk()))

    async def talk(farm: Farm) -> None:
        host = farm.plan.hosts[0]
        async with associated(host) as (answer, assoc):
            refused = {c.abstract_syntax: c.result for c in answer.contexts if not c.accepted}
            assert refused == {uids.STUDY_ROOT_FIND: 3, uids.PATIENT_ROOT_FIND: 3}
            echo = answer.accepted_context(uids.VERIFICATION)
            assert echo is not None
            assert await assoc.echo(echo) == 0
        assert await store_one(host, instance) == 0x0000
        assert await store_one(host, instance) == 0x0000

    farm = run(talk, plan)
    assert farm.state(0).stored == 2
    assert farm.stats.stores == 2


# -- hostile hosts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "error"),
    [
        (Profile.HOSTILE_GARBAGE, MalformedPdu),
        (Profile.HOSTILE_HUGE_PDU, PduTooLarge),
        (Profile.HOSTILE_SILENT, TimeoutError),
        (Profile.HOSTILE_CLOSE_MID_PDU, PeerClosed),
    ],
)
def test_hostile_hosts_fail_clients_in_bounded_time(
    profile: Profile, error: type[Exception]
) -> None:
    base = f"127.80.6.{1 + 10 * list(Profile).index(profile)}"
    plan = plan_farm(3, base_address=base, port=0, seed=3, profile=profile)

    async def talk(farm: Farm) -> None:
        for host in farm.plan.hosts:  # three seeds: every garbage variant
            started = time.monotonic()
            with pytest.raises(error):
                await request_association(
                    host.address,
                    host.port,
                    calling_ae="PACSGUARD",
                    called_ae="ANY-SCP",
                    contexts=CONTEXTS,
                    timeouts=Timeouts(connect=2.0, read=0.5),
                )
            assert time.monotonic() - started < 2.0

    farm = run(talk, plan)
    assert farm.stats.internal_errors == 0


def test_silent_host_lets_go_after_its_hold() -> None:
    plan = plan_farm(1, base_address="127.80.7.1", port=0, profile=Profile.HOSTILE_SILENT)

    async def talk(farm: Farm) -> None:
        host = farm.plan.hosts[0]
        reader, writer = await asyncio.open_connection(host.address, host.port)
        writer.write(b"hello")
        started = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert 0.3 < time.monotonic() - started < 3
        writer.close()

    run(talk, plan, Limits(hostile_hold=0.5))


# -- robustness ------------------------------------------------------------------------------


async def throw(host: HostSpec, data: bytes, *, hang_up: bool) -> bytes:
    """Send `data`; hang up at once or read until the farm closes. Returns what came back."""
    reader, writer = await asyncio.open_connection(host.address, host.port)
    writer.write(data)
    await writer.drain()
    received = b""
    if not hang_up:
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(5):
                received = await reader.read()
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    return received


def test_farm_survives_garbage_and_serves_the_next_client() -> None:
    plan = plan_farm(1, base_address="127.80.8.1", port=0, profile=Profile.OPEN)
    rq = encode_associate_rq("PACSGUARD", "ANY-SCP", CONTEXTS, 16384)

    async def talk(farm: Farm) -> None:
        host = farm.plan.hosts[0]
        await throw(host, b"\xff" + os.urandom(300), hang_up=False)
        await throw(host, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", hang_up=False)
        await throw(host, b"\x01\x00\xff\xff\xff\xff", hang_up=False)  # 4 GB announced
        await throw(host, rq[: len(rq) // 2], hang_up=True)  # close mid-PDU
        await throw(host, rq[:3], hang_up=True)  # close mid-header
        await throw(host, rq[:10] + b"\x00" * (len(rq) - 10), hang_up=False)  # undecodable RQ
        # A valid association followed by a garbage P-DATA-TF: the farm aborts it.
        aborted = await throw(host, rq + b"\x04\x00\x00\x00\x00\x04junk", hang_up=False)
        assert aborted.endswith(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06")
        # Connect and say nothing: the farm closes after its association timeout.
        started = time.monotonic()
        assert await throw(host, b"", hang_up=False) == b""
        assert time.monotonic() - started < 2.5
        # Many garbage connections at once.
        await asyncio.gather(*(throw(host, os.urandom(64), hang_up=True) for _ in range(200)))
        async with associated(host) as (answer, assoc):
            echo = answer.accepted_context(uids.VERIFICATION)
            assert echo is not None
            assert await assoc.echo(echo) == 0

    farm = run(talk, plan)
    assert farm.stats.internal_errors == 0
    assert farm.stats.peer_errors >= 8
    assert farm.stats.echoes == 1


def test_connections_over_the_limit_are_closed() -> None:
    plan = plan_farm(1, base_address="127.80.9.1", port=0, profile=Profile.HOSTILE_SILENT)

    async def talk(farm: Farm) -> None:
        host = farm.plan.hosts[0]
        held = [await asyncio.open_connection(host.address, host.port) for _ in range(3)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection(host.address, host.port)
        async with asyncio.timeout(2):
            assert await reader.read() == b""
        writer.close()
        for _, w in held:
            w.close()

    farm = run(talk, plan, Limits(max_connections=3, hostile_hold=5.0))
    assert farm.stats.refused_over_limit == 1


def test_a_thousand_hosts_in_one_process() -> None:
    plan = plan_farm(1000, base_address="127.81.0.1", port=0, seed=8)

    async def talk(farm: Farm) -> None:
        hosts = farm.plan.hosts
        assert len({(h.address, h.port) for h in hosts}) == 1000
        gate = asyncio.Semaphore(200)

        async def touch(host: HostSpec) -> None:
            async with gate:
                _, writer = await asyncio.open_connection(host.address, host.port)
                writer.close()
                await writer.wait_closed()

        async def echo(host: HostSpec) -> None:
            async with gate, associated(host) as (answer, assoc):
                context = answer.accepted_context(uids.VERIFICATION)
                assert context is not None
                assert await assoc.echo(context) == 0

        async with asyncio.timeout(20):
            await asyncio.gather(*(touch(h) for h in hosts))
            await asyncio.gather(*(echo(h) for h in hosts if h.profile is Profile.OPEN))

    started = time.monotonic()
    farm = run(talk, plan)
    assert time.monotonic() - started < 20
    assert farm.stats.connections >= 1000
    assert farm.stats.internal_errors == 0


# -- dcmtk -----------------------------------------------------------------------------------

DCMTK = Path("/usr/bin")
needs_dcmtk = pytest.mark.skipif(
    not all((DCMTK / tool).exists() for tool in ("echoscu", "findscu", "storescu")),
    reason="dcmtk (echoscu, findscu, storescu) is not installed in /usr/bin",
)
DCMTK_ENV = {"PATH": "/usr/bin:/bin", "TCP_NODELAY": "1", "HOME": os.environ.get("HOME", "/")}


def dcmtk(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DCMTK / args[0]), "-to", "5", "-ta", "5", "-td", "5", *args[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env=DCMTK_ENV,
        cwd=cwd,
        check=False,
    )


@pytest.mark.interop
@needs_dcmtk
def test_dcmtk_echo_find_and_store(running_farm: type[RunningFarm], tmp_path: Path) -> None:
    lab = running_farm(
        merged(
            plan_farm(1, base_address="127.80.10.1", port=0, seed=4, profile=Profile.OPEN),
            plan_farm(1, base_address="127.80.10.2", port=0, profile=Profile.STORE_ONLY),
        )
    )
    open_host, store_host = lab.plan.hosts
    expected = truth_of(lab.farm)[open_host.address]["exposed_counts"]

    echo = dcmtk("echoscu", open_host.address, str(open_host.port))
    assert echo.returncode == 0, echo.stderr

    find = dcmtk(
        "findscu", "-S", "-X",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName",
        "-k", "NumberOfStudyRelatedInstances",
        open_host.address, str(open_host.port),
        cwd=tmp_path,
    )  # fmt: skip
    assert find.returncode == 0, find.stderr
    responses = sorted(tmp_path.glob("rsp*.dcm"))
    assert len(responses) == expected["studies"]
    instances = sum(int(dcmread(p).NumberOfStudyRelatedInstances) for p in responses)
    assert instances == expected["instances"]

    archive = generate_archive(9, 1)
    path = tmp_path / "one.dcm"
    build_dataset(*next(archive.walk())).save_as(path, enforce_file_format=True)
    store = dcmtk("storescu", store_host.address, str(store_host.port), str(path))
    assert store.returncode == 0, store.stderr
    # No query service: findscu finds no acceptable presentation context.
    refused = dcmtk(
        "findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", store_host.address, str(store_host.port)
    )
    assert refused.returncode != 0
    assert lab.farm.state(1).stored == 1


# -- CLI -------------------------------------------------------------------------------------


def test_cli_refuses_non_loopback_base_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for address in ("198.51.100.1", "0.0.0.0", "203.0.113.10"):
        code = main(
            [
                "lab",
                "serve",
                "--hosts",
                "2",
                "--base-address",
                address,
                "--truth",
                str(tmp_path / "t"),
            ]
        )
        assert code == 2
        assert "127.0.0.0/8" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_cli_generate_writes_files_and_counts(tmp_path: Path) -> None:
    code = main(["lab", "generate", "--out", str(tmp_path), "--patients", "2", "--seed", "5"])
    assert code == 0
    archive = generate_archive(5, 2)
    files = list(tmp_path.glob("*.dcm"))
    assert len(files) == archive.counts.instances
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts["counts"]["studies"] == archive.counts.studies
    for value in archive.sensitive_values():
        assert value not in (tmp_path / "counts.json").read_text()


def test_cli_serve_writes_truth_when_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    command = [
        sys.executable, "-c", "from pacsguard.cli import main; raise SystemExit(main())",
        "lab", "serve", "--hosts", "4", "--port", "0", "--base-address", "127.80.11.1",
        "--seed", "6", "--profile", "open", "--truth", str(truth_path),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not truth_path.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        truth = json.loads(truth_path.read_text())
        assert truth["host_count"] == 4
        host = truth["hosts"][0]
        spec = plan_farm(
            4, base_address="127.80.11.1", port=host["port"], seed=6, profile=Profile.OPEN
        ).hosts[0]

        async def echo() -> None:
            async with associated(spec) as (answer, assoc):
                context = answer.accepted_context(uids.VERIFICATION)
                assert context is not None
                assert await assoc.echo(context) == 0

        asyncio.run(echo())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert b"stopped:" in out
