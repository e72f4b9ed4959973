"""`pacsguard reload` and SIGHUP: a running archive takes over CLI edits of its config."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from pynetdicom import AE, Association
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification

from pacsguard.archive.audit.events import EventOutcome, EventType
from pacsguard.archive.audit.log import read_events, verify
from pacsguard.archive.config import DataLayout

from .conftest import PACSGUARD, free_port, make_data_dir, start_serve

PASSWORD = "a long synthetic test passcode"


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACSGUARD, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def _open(port: int, calling: str, passcode: str = PASSWORD) -> Association:
    """An association from `calling` with a PS3.7 username + passcode identity (pynetdicom)."""
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"bob"
    identity.secondary_field = passcode.encode()
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
    return ae.associate("127.0.0.1", port, ae_title="PACSGUARD", ext_neg=[identity])


def _echo_ok(assoc: Association) -> bool:
    status = assoc.send_c_echo()
    return bool(status) and status.Status == 0


def _can_echo(port: int, calling: str) -> bool:
    assoc = _open(port, calling)
    if not assoc.is_established:
        return False
    try:
        return _echo_ok(assoc)
    finally:
        assoc.release()


def _wait_for(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.2)
    return False


def test_reload_takes_over_cli_edits_and_keeps_open_associations(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    directory = ["--data-dir", str(data_dir)]
    port = free_port()
    proc = start_serve(data_dir, port, tmp_path / "serve.log")
    try:
        added = _cli("user", "add", "bob", "--role", "viewer", "--password-stdin", *directory,
                     stdin=PASSWORD + "\n")  # fmt: skip
        assert added.returncode == 0, added.stderr
        added = _cli("ae", "add", "BOBVIEW", "--auth", "user-password", "--username", "bob",
                     "--permission", "echo", "--address", "127.0.0.1", *directory)  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert not _can_echo(port, "BOBVIEW")  # edited on disk, not yet in force

        reloaded = _cli("reload", *directory)
        assert reloaded.returncode == 0, reloaded.stderr
        assert "AEs added 1 (BOBVIEW)" in reloaded.stdout
        assert "users added 1" in reloaded.stdout
        assert PASSWORD not in reloaded.stdout + reloaded.stderr

        held = _open(port, "BOBVIEW")  # opened before BOBVIEW is removed again
        assert held.is_established
        try:
            assert _echo_ok(held)
            assert _cli("ae", "remove", "BOBVIEW", *directory).returncode == 0
            # SIGHUP is the other way to ask; it answers in the log, so poll the effect
            proc.send_signal(signal.SIGHUP)
            assert _wait_for(lambda: not _can_echo(port, "BOBVIEW"))
            assert _echo_ok(held)  # the open association keeps its principal and goes on
        finally:
            held.release()

        # an invalid config on disk (an edit by hand): refused, the running one stays
        config = data_dir / "pacsguard.toml"
        good = config.read_text()
        bobview = (
            '\n[[ae]]\nae_title = "BOBVIEW"\nauth = "user-password"\nusername = "bob"\n'
            'permissions = ["echo"]\n'
        )
        config.write_text(good.replace("max_failures = 5", 'max_failures = "many"') + bobview)
        refused = _cli("reload", *directory)
        assert refused.returncode == 2
        assert "refused" in refused.stderr and "max_failures" in refused.stderr
        assert not _can_echo(port, "BOBVIEW")  # the refused file would have let it in
        config.write_text(good + bobview + '\n[[ae]]\nae_title = "HAND"\nauth = "mtls"\n')
        refused = _cli("reload", *directory)
        assert refused.returncode == 2 and "cert_sha256" in refused.stderr
        assert not _can_echo(port, "BOBVIEW")
        config.write_text(good)
        assert _cli("user", "remove", "bob", *directory).returncode == 0
        assert _cli("reload", *directory).returncode == 0

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = (tmp_path / "serve.log").read_text()
    assert "AEs added 0; removed 1 (BOBVIEW)" in log_text  # the SIGHUP reload
    assert PASSWORD not in log_text
    audit_log = DataLayout(data_dir).audit_log
    assert verify(audit_log).ok
    reloads = [
        e.event
        for e in read_events(audit_log)
        if e.event.event is EventType.SECURITY_ALERT
        and str(e.event.detail.get("result", "")).startswith("config-reload")
    ]
    assert [(e.detail["result"], e.outcome) for e in reloads] == [
        ("config-reloaded", EventOutcome.SUCCESS),
        ("config-reloaded", EventOutcome.SUCCESS),
        ("config-reload-refused", EventOutcome.MINOR_FAILURE),
        ("config-reload-refused", EventOutcome.MINOR_FAILURE),
        ("config-reloaded", EventOutcome.SUCCESS),
    ]
    assert reloads[0].detail["aes_added"] == "BOBVIEW"
    assert reloads[0].detail["users_added"] == 1
    assert reloads[1].detail["requested_by"] == "SIGHUP"
    assert reloads[1].detail["aes_removed"] == "BOBVIEW"
    assert str(reloads[0].detail["requested_by"]).startswith("pacsguard reload (uid ")
    assert reloads[4].detail["users_removed"] == 1
    assert all(PASSWORD not in str(e.detail) and "$argon2" not in str(e.detail) for e in reloads)
    assert not list(data_dir.glob("reload.*"))
