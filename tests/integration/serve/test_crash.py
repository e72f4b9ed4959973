"""SIGKILL in the middle of a 1,000-instance ingest loses no acknowledged instance."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from pacsguard.archive.app import open_storage
from pacsguard.archive.audit.log import verify
from pacsguard.archive.config import load_settings
from pacsguard.archive.fsck import run_fsck
from pacsguard.dicom import uids
from pacsguard.dicom.dimse import encode_dataset
from pacsguard.errors import PeerClosed
from pacsguard.lab.synth import build_dataset, generate_archive

from .conftest import PACSGUARD, free_port, make_data_dir, open_as_tester, start_serve


def instances() -> list[tuple[str, str, bytes]]:
    lab = generate_archive(
        77,
        50,
        studies_per_patient=(2, 2),
        series_per_study=(2, 2),
        instances_per_series=(5, 5),
    )
    assert lab.counts.instances == 1000
    explicit = uids.EXPLICIT_VR_LITTLE_ENDIAN
    return [
        (
            inst.sop_instance_uid,
            inst.sop_class_uid,
            encode_dataset(build_dataset(p, st, se, inst), explicit).getvalue(),
        )
        for p, st, se, inst in lab.walk()
    ]


async def ingest_until_killed(
    port: int, items: list[tuple[str, str, bytes]], proc: subprocess.Popen[bytes], kill_after: int
) -> list[str]:
    """Store one by one; SIGKILL the server shortly after `kill_after` acknowledgements."""
    acked: list[str] = []
    assoc = await open_as_tester(port, [uids.CT_IMAGE_STORAGE, uids.MR_IMAGE_STORAGE])
    contexts = {
        sop: assoc.accepted.accepted_context(sop)
        for sop in (uids.CT_IMAGE_STORAGE, uids.MR_IMAGE_STORAGE)
    }
    loop = asyncio.get_running_loop()
    try:
        for uid, sop_class, data in items:
            if len(acked) == kill_after:
                loop.call_later(0.005, os.kill, proc.pid, signal.SIGKILL)
            context = contexts[sop_class]
            assert context is not None
            status = await assoc.store(context, uid, data)
            assert status == 0, f"0x{status:04X}"
            acked.append(uid)
    except (PeerClosed, OSError, TimeoutError):
        pass  # the server died mid-conversation: expected
    finally:
        await assoc.abort()
    return acked


def test_sigkill_mid_ingest_keeps_every_acknowledged_instance(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    port = free_port()
    log = tmp_path / "serve.log"
    items = instances()
    proc = start_serve(data_dir, port, log)
    try:
        acked = asyncio.run(ingest_until_killed(port, items, proc, kill_after=400))
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 400 <= len(acked) < len(items), len(acked)

    # Restart on the same data: recovery runs, the archive serves again.
    again = start_serve(data_dir, port, log)
    try:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()

    settings = load_settings(data_dir / "pacsguard.toml", env={})
    index, blobs = open_storage(settings)
    try:
        for uid in acked:
            record = index.get(uid)
            assert record is not None, f"acknowledged instance {uid} lost"
            assert blobs.exists(record.blob_key)
        report = run_fsck(index, blobs, verify_hashes=True)
        assert report.ok, report
        assert report.checked >= len(acked)
    finally:
        index.close()
    fsck = subprocess.run(
        [PACSGUARD, "fsck", "--data-dir", str(data_dir)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert verify(settings.audit.log_path).ok
