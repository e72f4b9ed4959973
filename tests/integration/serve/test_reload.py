"""`pacsguard reload` and SIGHUP: a running archive takes over CLI edits of its config."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, Association, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsguard.archive.audit.events import EventOutcome, EventType
from pacsguard.archive.audit.log import read_events, verify
from pacsguard.archive.config import DataLayout, Settings, load_settings
from pacsguard.archive.reload import reload_archive
from pacsguard.errors import ConfigError
from pacsguard.lab.synth import build_dataset, generate_archive

from .conftest import PACSGUARD, StartArchive, free_port, make_data_dir, start_serve

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


def test_reload_swaps_move_destinations_and_refuses_an_unreadable_jwt_key(
    start: StartArchive, tmp_path: Path
) -> None:
    """In-process: a reload that cannot build what the new config needs changes nothing."""
    data_dir = make_data_dir(tmp_path / "d")
    archive = start(data_dir)
    config = data_dir / "pacsguard.toml"
    ports = {  # the archive's own listeners, as start() chose them
        "server.dimse_port": archive.settings.server.dimse_port,
        "server.plaintext_port": archive.settings.server.plaintext_port,
    }

    def load() -> Settings:
        return load_settings(config, env={}, overrides=ports)

    assert archive.move_destination("VIEWER") is None
    config.write_text(
        config.read_text()
        + '\n[[ae]]\nae_title = "VIEWER"\nauth = "address"\naddress = "127.0.0.1"\n'
        "port = 11112\nmove_destination = true\npermissions = []\n"
    )
    result = reload_archive(archive, load, archive.audit, "test")
    assert result.added == ("VIEWER",) and result.restart_needed == ()
    destination = archive.move_destination("VIEWER")
    assert destination is not None and (destination.host, destination.port) == ("127.0.0.1", 11112)

    before = archive.settings
    (tmp_path / "absent.secret").unlink(missing_ok=True)
    config.write_text(
        config.read_text() + f'\n[jwt]\nissuer = "https://idp.test"\naudience = "pacsguard"\n'
        f'secret_file = "{tmp_path / "absent.secret"}"\n'
        '\n[[ae]]\nae_title = "APP"\nauth = "jwt"\nusername = "svc"\npermissions = ["echo"]\n'
    )
    with pytest.raises(ConfigError, match=r"jwt\.secret_file"):
        reload_archive(archive, load, archive.audit, "test")
    assert archive.settings is before  # nothing swapped
    assert archive.settings.ae("APP") is None

    config.write_text(config.read_text().replace("dimse_timeout_s = 60", "dimse_timeout_s = 61"))
    (tmp_path / "absent.secret").write_bytes(b"0123456789abcdef0123456789abcdef")
    result = reload_archive(archive, load, archive.audit, "test")
    assert result.added == ("APP",)
    assert result.restart_needed == ("server",)  # reported, not applied
    assert archive.settings.server.dimse_timeout_s == 60
    assert archive.settings.ae("APP") is not None


def test_a_move_destination_added_by_the_cli_receives_after_reload(
    start: StartArchive, tmp_path: Path
) -> None:
    """C-MOVE to an AE that is not registered fails; `ae add` + reload, and it is sent."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    scp = AE(ae_title="DEST")
    for storage in (CTImageStorage, MRImageStorage):
        scp.add_supported_context(storage, ExplicitVRLittleEndian)
    server = scp.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        data_dir = make_data_dir(tmp_path / "d")
        archive = start(data_dir)
        lab = generate_archive(41, 1, studies_per_patient=(1, 1), series_per_study=(1, 1),
                               instances_per_series=(1, 1))  # fmt: skip
        dataset = next(build_dataset(*path) for path in lab.walk())
        endpoint = next(e for e in archive.endpoints if not e.tls)
        client = AE(ae_title="TESTER")
        client.add_requested_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
        client.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        client.acse_timeout = client.dimse_timeout = client.network_timeout = 30
        assoc = client.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
        assert assoc.is_established
        try:
            assert assoc.send_c_store(dataset).Status == 0x0000
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = dataset.StudyInstanceUID

            def move() -> list[int]:
                return [
                    int(status.Status)
                    for status, _ in assoc.send_c_move(
                        query, "DEST", StudyRootQueryRetrieveInformationModelMove
                    )
                    if status
                ]

            assert move()[-1] == 0xA801  # move destination unknown
            assert received == []
            added = _cli("ae", "add", "DEST", "--auth", "address", "--address", "127.0.0.1",
                         "--port", str(server.server_address[1]), "--move-destination",
                         "--data-dir", str(data_dir))  # fmt: skip
            assert added.returncode == 0, added.stderr
            ports = {
                "server.dimse_port": archive.settings.server.dimse_port,
                "server.plaintext_port": archive.settings.server.plaintext_port,
            }
            config = data_dir / "pacsguard.toml"
            reload_archive(
                archive, lambda: load_settings(config, env={}, overrides=ports), archive.audit, "t"
            )
            assert move()[-1] == 0x0000  # the open association sees the new destination
            assert received == [str(dataset.SOPInstanceUID)]
        finally:
            assoc.release()
    finally:
        server.shutdown()
