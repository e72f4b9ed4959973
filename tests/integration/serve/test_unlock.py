"""`pacsguard unlock`: an operator lets a locked-out source in again, without a restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from pacsguard.archive.audit.events import EventType
from pacsguard.archive.audit.log import read_events, verify
from pacsguard.archive.config import DataLayout
from pacsguard.dicom import uids
from pacsguard.dicom.client import Timeouts, request_association
from pacsguard.dicom.ul import AssociationRejected, propose

from .conftest import PACSGUARD, free_port, make_data_dir, start_serve


def _associate(port: int, calling_ae: str) -> bool:
    """True when the archive accepts an association from `calling_ae` (released at once)."""

    async def attempt() -> bool:
        answer, assoc = await request_association(
            "127.0.0.1", port, calling_ae=calling_ae, called_ae="PACSGUARD",
            contexts=propose([uids.VERIFICATION]), timeouts=Timeouts(connect=2.0, read=10.0),
        )  # fmt: skip
        if assoc is None:
            assert isinstance(answer, AssociationRejected)
            return False
        await assoc.release()
        return True

    return asyncio.run(attempt())


def _unlock(data_dir: Path, *addresses: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACSGUARD, "unlock", "--data-dir", str(data_dir), *addresses],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_unlock_lifts_a_lockout_in_the_running_archive_and_audits_it(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    port = free_port()
    proc = start_serve(data_dir, port, tmp_path / "serve.log")
    try:
        for _ in range(5):  # [security.lockout] max_failures = 5 by default
            assert not _associate(port, "STRANGER")
        assert not _associate(port, "TESTER")  # locked out: even a registered AE
        done = _unlock(data_dir, "198.51.100.9")  # not locked: nothing to lift
        assert done.returncode == 0, done.stderr
        assert "no lockout to lift (audited)" in done.stdout
        assert not _associate(port, "TESTER")
        done = _unlock(data_dir)
        assert done.returncode == 0, done.stderr
        assert "lockout lifted for 127.0.0.1" in done.stdout
        assert _associate(port, "TESTER")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = _unlock(data_dir)
    assert stopped.returncode != 0
    assert "no pacsguard archive is running" in stopped.stdout + stopped.stderr
    log = DataLayout(data_dir).audit_log
    assert verify(log).ok
    lifts = [e.event for e in read_events(log) if e.event.event is EventType.SECURITY_ALERT]
    assert [dict(e.detail) for e in lifts] == [
        {"result": "lockout-lifted", "asked": "198.51.100.9", "lifted": ""},
        {"result": "lockout-lifted", "asked": "all", "lifted": "127.0.0.1"},
    ]
    assert not list(data_dir.glob("unlock.*"))  # request and answer are gone


def test_unlock_refuses_what_is_not_an_address(tmp_path: Path) -> None:
    done = _unlock(tmp_path, "pacs.example.org")
    assert done.returncode == 2
    assert "is not an IP address" in done.stdout + done.stderr
