"""`[server] workers = 2`: a supervisor and two worker processes behind one set of ports.

Real processes throughout: `pacsguard serve`, dcmtk storescu, our DICOM client. The workers
share one audit chain, one lockout count and one set of association slots (the supervisor's);
a worker killed mid-transfer loses nothing it acknowledged and is restarted.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from pacsguard.archive.app import open_storage
from pacsguard.archive.audit.events import EventType
from pacsguard.archive.audit.log import read_events, verify
from pacsguard.archive.config import DataLayout, load_settings
from pacsguard.archive.fsck import FsckReport, run_fsck
from pacsguard.dicom import uids
from pacsguard.dicom.client import Association, Timeouts, request_association
from pacsguard.dicom.ul import propose
from pacsguard.errors import PeerClosed

from .conftest import PACSGUARD, TESTER, free_port, make_data_dir, open_as_tester
from .test_crash import instances
from .test_unlock import _associate, _unlock

WORKERS = 2


def make_workers_dir(tmp: Path, extra: str = TESTER) -> Path:
    data_dir = make_data_dir(tmp, extra)
    config = data_dir / "pacsguard.toml"
    text = config.read_text(encoding="utf-8")
    assert "\nworkers = 1\n" in text
    text = text.replace("\nworkers = 1\n", f"\nworkers = {WORKERS}\n")
    config.write_text(text, encoding="utf-8")
    return data_dir


def start_workers(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`pacsguard serve` with workers, plaintext on `port`, once it says "ready" (its
    supervisor listens before the workers accept)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                PACSGUARD, "serve", "--data-dir", str(data_dir), "--no-self-check",
                "--port", str(free_port()), "--plaintext-port", str(port),
            ],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()[-3000:]}")
        if "\nready" in log.read_text(errors="replace"):
            assert len(worker_pids(proc.pid)) == WORKERS
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not start")


def worker_pids(supervisor: int) -> list[int]:
    """The live child processes of `supervisor`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == supervisor and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def serving_pid(assoc: Association, candidates: list[int]) -> int:
    """Which of `candidates` holds the server side of `assoc`'s TCP connection."""
    local_port = assoc._writer.get_extra_info("sockname")[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == local_port:  # the server's end: its peer is our port
            inode = fields[9]
    assert inode is not None
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds the connection from port {local_port}")


async def _open(port: int, calling_ae: str) -> Association:
    answer, assoc = await request_association(
        "127.0.0.1", port, calling_ae=calling_ae, called_ae="PACSGUARD",
        contexts=propose([uids.VERIFICATION]), timeouts=Timeouts(connect=2.0, read=10.0),
    )  # fmt: skip
    assert assoc is not None, answer
    return assoc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


# -- ingest, a worker killed mid-transfer ------------------------------------------------------
async def _store_all(
    port: int, items: list[tuple[str, str, bytes]], acked: list[str], pause: float = 0.0
) -> None:
    """Store `items` on one association, noting each acknowledged UID, until the archive
    drops the association (its worker killed)."""
    assoc = await open_as_tester(port, [uids.CT_IMAGE_STORAGE, uids.MR_IMAGE_STORAGE])
    contexts = {
        sop: assoc.accepted.accepted_context(sop)
        for sop in (uids.CT_IMAGE_STORAGE, uids.MR_IMAGE_STORAGE)
    }
    try:
        for uid, sop_class, data in items:
            context = contexts[sop_class]
            assert context is not None
            status = await assoc.store(context, uid, data)
            assert status == 0, f"0x{status:04X}"
            acked.append(uid)
            if pause:
                await asyncio.sleep(pause)
    except (PeerClosed, OSError, TimeoutError):
        return  # our worker died mid-conversation: expected for one of them
    finally:
        await assoc.abort()


def fsck_of(data_dir: Path) -> FsckReport:
    """fsck (hashes verified) of a stopped archive's data folder."""
    index, blobs = open_storage(load_settings(data_dir / "pacsguard.toml", env={}))
    try:
        return run_fsck(index, blobs, verify_hashes=True)
    finally:
        index.close()


def test_worker_killed_mid_ingest_loses_nothing_acknowledged_and_is_restarted(
    tmp_path: Path,
) -> None:
    data_dir = make_workers_dir(tmp_path / "data")
    port = free_port()
    proc = start_workers(data_dir, port, tmp_path / "serve.log")
    items = instances()[:400]
    acked: list[list[str]] = [[] for _ in range(4)]
    try:
        workers = worker_pids(proc.pid)

        async def ingest_and_kill() -> None:
            senders = [
                asyncio.create_task(_store_all(port, items[i::4], acked[i], 0.002))
                for i in range(4)
            ]
            while sum(map(len, acked)) < 80:
                await asyncio.sleep(0.01)
            os.kill(workers[0], signal.SIGKILL)
            await asyncio.gather(*senders)

        asyncio.run(ingest_and_kill())
        done = {uid for one in acked for uid in one}
        assert 80 <= len(done) < len(items)  # the killed worker's senders stopped early
        assert sum(len(one) == len(items) // 4 for one in acked) >= 1  # the other's finished
        # The supervisor starts a new worker; the archive takes what was not acknowledged.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = worker_pids(proc.pid)
            if len(now) == WORKERS and workers[0] not in now:
                break
            time.sleep(0.1)
        assert len(worker_pids(proc.pid)) == WORKERS
        assert workers[0] not in worker_pids(proc.pid)
        assert re.search(
            r"worker \d ended \(exit status -9\)", (tmp_path / "serve.log").read_text()
        )
        rest = [item for item in items if item[0] not in done]
        again: list[list[str]] = [[], []]

        async def finish() -> None:
            await asyncio.gather(*(_store_all(port, rest[i::2], again[i]) for i in range(2)))

        asyncio.run(finish())
        assert sorted(again[0] + again[1]) == sorted(uid for uid, _, _ in rest)
        stop(proc)
        # A worker died: the marker stays, so that the next start runs crash recovery.
        assert (data_dir / "archive.running").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    settings = load_settings(data_dir / "pacsguard.toml", env={})
    index, blobs = open_storage(settings)
    try:
        report = run_fsck(index, blobs, verify_hashes=True)
        for uid, _, _ in items:  # everything acknowledged, before and after the kill, is held
            assert index.stored_copy(uid) is not None, uid
    finally:
        index.close()
    assert not report.missing and not report.mismatches and not report.unreadable, report
    log = DataLayout(data_dir).audit_log
    assert verify(log).ok
    stored = {
        obj[1]
        for e in read_events(log)
        if e.event.event is EventType.STORE and e.event.outcome == 0
        for obj in e.event.objects
        if obj[0] == "instance"
    }
    assert {uid for uid, _, _ in items} <= stored  # every acknowledged store has its line
    kinds = [e.event.event for e in read_events(log)]
    assert kinds.count(EventType.APPLICATION_START) == 1  # one archive, one chain
    assert kinds[-1] is EventType.APPLICATION_STOP


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk storescu not installed")
def test_four_concurrent_storescu_through_two_workers(tmp_path: Path) -> None:
    data_dir = make_workers_dir(tmp_path / "data")
    port = free_port()
    for n, (uid, _, data) in enumerate(instances()[:200]):
        folder = tmp_path / f"set{n % 4}"
        folder.mkdir(exist_ok=True)
        _write_part10(folder / f"{uid}.dcm", data)
    proc = start_workers(data_dir, port, tmp_path / "serve.log")
    try:
        senders = [
            subprocess.Popen(
                [
                    "storescu",
                    "-aet",
                    "TESTER",
                    "-aec",
                    "PACSGUARD",
                    "127.0.0.1",
                    str(port),
                    "+sd",
                    str(tmp_path / f"set{i}"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for i in range(4)
        ]
        for sender in senders:
            out, _ = sender.communicate(timeout=120)
            assert sender.returncode == 0, out.decode(errors="replace")[-2000:]
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = fsck_of(data_dir)
    assert report.checked == 200, report
    assert not (report.missing or report.orphans or report.mismatches or report.unreadable)
    assert verify(DataLayout(data_dir).audit_log).ok


def _write_part10(path: Path, data: bytes) -> None:
    """An Explicit VR Little Endian data set as a Part 10 file, for storescu."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    ds = dcmread(BytesIO(data), force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(uids.EXPLICIT_VR_LITTLE_ENDIAN)
    ds.save_as(path, enforce_file_format=True)


# -- shared state ------------------------------------------------------------------------------
def test_lockout_counted_in_one_worker_applies_in_the_other(tmp_path: Path) -> None:
    data_dir = make_workers_dir(tmp_path / "data")
    port = free_port()
    proc = start_workers(data_dir, port, tmp_path / "serve.log")
    try:
        workers = worker_pids(proc.pid)

        async def scenario() -> tuple[int, int, bool]:
            # A held association occupies one worker, so that the failures that follow go to
            # the other (the supervisor passes each connection to the least busy worker).
            a = await open_as_tester(port, [uids.VERIFICATION])
            on_a = serving_pid(a, workers)
            for _ in range(2):
                assert not await asyncio.to_thread(_associate, port, "STRANGER")
                await asyncio.sleep(0.2)  # the supervisor hears that the connection ended
            b = await open_as_tester(port, [uids.VERIFICATION])
            on_b = serving_pid(b, workers)
            await a.release()  # now a's worker is the idle one: the next three go there
            await asyncio.sleep(0.2)
            for _ in range(3):
                assert not await asyncio.to_thread(_associate, port, "STRANGER")
                await asyncio.sleep(0.2)
            # 2 failures in one worker and 3 in the other: 5, the lockout, only if shared.
            tester = await asyncio.to_thread(_associate, port, "TESTER")
            await b.release()
            return on_a, on_b, tester

        on_a, on_b, tester_accepted = asyncio.run(scenario())
        assert on_a != on_b
        assert not tester_accepted  # locked out: even a registered AE
        # `pacsguard unlock` reaches the supervisor, which holds the one count.
        done = _unlock(data_dir)
        assert done.returncode == 0, done.stderr
        assert "lockout lifted for 127.0.0.1" in done.stdout
        assert _associate(port, "TESTER")
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = DataLayout(data_dir).audit_log
    assert verify(log).ok
    locked = [e.event for e in read_events(log) if e.event.detail.get("result") == "locked-out"]
    assert len(locked) == 1, "the lockout is audited, once"
    lifted = [e.event for e in read_events(log) if e.event.detail.get("result") == "lockout-lifted"]
    assert len(lifted) == 1


def test_sighup_reloads_every_worker(tmp_path: Path) -> None:
    data_dir = make_workers_dir(tmp_path / "data")
    port = free_port()
    proc = start_workers(data_dir, port, tmp_path / "serve.log")
    try:
        assert not _associate(port, "NEWCOMER")
        config = data_dir / "pacsguard.toml"
        config.write_text(
            config.read_text(encoding="utf-8") + TESTER.replace("TESTER", "NEWCOMER"),
            encoding="utf-8",
        )
        proc.send_signal(signal.SIGHUP)
        assert _reloads(data_dir, "NEWCOMER") == WORKERS  # one audited reload per worker

        async def both_workers() -> set[int]:
            # Two associations at once go to the two workers: each knows NEWCOMER now.
            held = [await _open(port, "NEWCOMER"), await _open(port, "NEWCOMER")]
            try:
                return {serving_pid(assoc, worker_pids(proc.pid)) for assoc in held}
            finally:
                for assoc in held:
                    await assoc.release()

        assert len(asyncio.run(both_workers())) == WORKERS
        # `pacsguard reload` asks the supervisor, which checks the file and passes it on.
        config.write_text(config.read_text(encoding="utf-8") + "\n[[ae]\n", encoding="utf-8")
        refused = _reload(data_dir)
        assert refused.returncode != 0 and "refused" in refused.stdout + refused.stderr
        config.write_text(
            config.read_text(encoding="utf-8").replace("\n[[ae]\n", "")
            + TESTER.replace("TESTER", "LATECOMER"),
            encoding="utf-8",
        )
        done = _reload(data_dir)
        assert done.returncode == 0, done.stdout + done.stderr
        assert _reloads(data_dir, "LATECOMER") == WORKERS
        assert _associate(port, "LATECOMER")
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert verify(DataLayout(data_dir).audit_log).ok
    assert not (data_dir / "archive.running").exists()  # a clean stop
    added = [
        e.event.detail.get("aes_added")
        for e in read_events(DataLayout(data_dir).audit_log)
        if e.event.detail.get("result") == "config-reloaded"
    ]
    assert added == ["NEWCOMER"] * WORKERS + ["LATECOMER"] * WORKERS
    refusals = [
        e.event
        for e in read_events(DataLayout(data_dir).audit_log)
        if e.event.detail.get("result") == "config-reload-refused"
    ]
    assert len(refusals) == 1  # audited once, by the supervisor that checked the file


def _reloads(data_dir: Path, added: str) -> int:
    """How many workers audited a reload that added `added` (waiting up to 30 s for all)."""
    log = DataLayout(data_dir).audit_log
    deadline = time.monotonic() + 30
    while True:
        count = sum(
            1
            for e in read_events(log)
            if e.event.detail.get("result") == "config-reloaded"
            and e.event.detail.get("aes_added") == added
        )
        if count >= WORKERS or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def _reload(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACSGUARD, "reload", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_dicomweb_is_served_by_every_worker(tmp_path: Path) -> None:
    import httpx

    from pacsguard.archive import tokens

    data_dir = make_workers_dir(tmp_path / "data")
    token = tokens.issue(data_dir / tokens.TOKENS_FILE, "admin", days=1)[1]
    port, web_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                PACSGUARD, "serve", "--data-dir", str(data_dir), "--no-self-check",
                "--port", str(free_port()), "--plaintext-port", str(port),
                "--web-port", str(web_port),
            ],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "\nready" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        workers = worker_pids(proc.pid)
        listening = _listening_inode(web_port)
        for pid in workers:  # each worker accepts on the supervisor's HTTPS socket
            held = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
            assert f"socket:[{listening}]" in held
        items = instances()[:20]
        acked: list[str] = []
        asyncio.run(_store_all(port, items, acked))
        assert len(acked) == 20
        studies = {uid for uid in _study_uids(items)}
        tls = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.crt"))
        for _ in range(8):  # a new connection each time, taken by whichever worker is free
            with httpx.Client(
                base_url=f"https://127.0.0.1:{web_port}",
                verify=tls,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ) as client:
                answer = client.get("/studies")
                assert answer.status_code == 200, answer.text
                found = {s["0020000D"]["Value"][0] for s in answer.json()}
                assert found == studies
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert verify(DataLayout(data_dir).audit_log).ok


def _listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def _study_uids(items: list[tuple[str, str, bytes]]) -> set[str]:
    from io import BytesIO

    from pydicom import dcmread

    return {str(dcmread(BytesIO(data), force=True).StudyInstanceUID) for _, _, data in items}


def test_supervisor_killed_its_workers_stop_and_the_next_start_recovers(tmp_path: Path) -> None:
    data_dir = make_workers_dir(tmp_path / "data")
    port = free_port()
    proc = start_workers(data_dir, port, tmp_path / "serve.log")
    items = instances()[:40]
    acked: list[str] = []
    try:
        workers = worker_pids(proc.pid)
        asyncio.run(_store_all(port, items, acked))
        assert len(acked) == 40
        proc.kill()  # SIGKILL: no orderly stop, the marker stays
        proc.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.1)
        assert "worker lost its supervisor" in (tmp_path / "serve.log").read_text()
        assert (data_dir / "archive.running").exists()
        proc = start_workers(data_dir, port, tmp_path / "serve2.log")  # recovers, then serves
        more: list[str] = []
        asyncio.run(_store_all(port, instances()[40:60], more))
        assert len(more) == 20
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = fsck_of(data_dir)
    assert report.checked == 60 and not (report.missing or report.orphans or report.mismatches)
    kinds = [e.event.event for e in read_events(DataLayout(data_dir).audit_log)]
    assert verify(DataLayout(data_dir).audit_log).ok
    assert kinds.count(EventType.APPLICATION_START) == 2


def test_the_banner_comes_before_the_first_workers_self_check(tmp_path: Path) -> None:
    # A new user reads where the archive listens, then what the self-check saw there.
    data_dir, log = make_workers_dir(tmp_path / "data"), tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PACSGUARD, "serve", "--data-dir", str(data_dir), "--port", str(free_port())],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "\nready" not in (text := log.read_text(errors="replace")):
            assert proc.poll() is None and time.monotonic() < deadline, text[-3000:]
            time.sleep(0.1)
        banner, check = text.find("pacsguard archive 'PACSGUARD'"), text.find("self-check")
        assert 0 <= banner < check < text.find("\nready"), text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
