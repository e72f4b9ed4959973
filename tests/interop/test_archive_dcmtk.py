"""The archive (`pacsguard serve`) against real dcmtk clients, over TLS and loopback plaintext.

Peers, each registered the way an administrator would, by appending to the generated config:
- STORER: PS3.7 user identity (username + passcode), may echo and store; storescu +tls --user.
- VIEWER: mutual TLS with a client certificate from our CA, may echo and find.
- RETRIEVER: bound to its address (127.0.0.1), may find, move and get; movescu/getscu through
  the loopback plaintext listener (Debian's dcmtk build has no TLS in those two tools).
- DEST: a dcmtk storescp registered as C-MOVE destination (address + port).
- TLSDEST: a dcmtk storescp +tls with a server certificate from our CA, which requires a client
  certificate from it too: registered with move_tls = true.
- FOREIGN: the same, but its certificate comes from another CA: C-MOVE must not send to it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsguard.archive.app import RunningArchive, start_archive
from pacsguard.archive.audit.log import verify
from pacsguard.archive.config import load_settings
from pacsguard.archive.security.bootstrap import (
    LocalCA,
    hash_secret,
    initialize,
    issue_client_certificate,
    issue_server_certificate,
)
from pacsguard.archive.selfcheck import self_check, worst
from pacsguard.scan.model import Severity

from .peers import (
    LabData,
    StorescpPeer,
    ToolOutcome,
    executable,
    free_port,
    run_tool,
    running_storescp,
)

pytestmark = pytest.mark.interop

STORER_PASSWORD = "correct horse battery staple"


@dataclass
class Archive:
    running: RunningArchive
    data_dir: Path
    tls_port: int
    plain_port: int
    ca: Path
    viewer_cert: Path
    viewer_key: Path
    tls_dest: StorescpPeer
    foreign_dest: StorescpPeer
    loaded: ToolOutcome | None = None
    ae_title: str = "PACSGUARD"


def _destination(peer: StorescpPeer, *, tls: bool) -> str:
    """The [[ae]] entry of a C-MOVE destination (trusted by its loopback address)."""
    return f"""
[[ae]]
ae_title = "{peer.aet}"
auth = "address"
address = "127.0.0.1"
port = {peer.port}
move_destination = true
move_tls = {str(tls).lower()}
permissions = []
"""


def _append_peers(
    config: Path,
    viewer_sha: str,
    dest: StorescpPeer,
    storer_hash: str,
    tls_dests: tuple[StorescpPeer, ...],
) -> None:
    with config.open("a", encoding="utf-8") as f:
        f.write(
            f"""
[users.storer]
password_hash = "{storer_hash}"
roles = ["modality"]

[[ae]]
ae_title = "STORER"
auth = "user-password"
username = "storer"
address = "127.0.0.1"
permissions = ["echo", "store"]

[[ae]]
ae_title = "VIEWER"
auth = "mtls"
cert_sha256 = "{viewer_sha}"
permissions = ["echo", "find"]

[[ae]]
ae_title = "RETRIEVER"
auth = "address"
address = "127.0.0.1"
permissions = ["echo", "find", "move", "get"]
"""
        )
        f.write(_destination(dest, tls=False))
        for peer in tls_dests:
            f.write(_destination(peer, tls=True))
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("allow_address_auth = false", "allow_address_auth = true"), encoding="utf-8"
    )


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, storescp_peer: StorescpPeer, lab_data: LabData
) -> Iterator[Archive]:
    """A running archive with the peers registered and the lab archive stored by STORER."""
    data_dir = tmp_path_factory.mktemp("archive")
    initialize(data_dir)
    layout_ca = data_dir / "tls" / "ca.crt"
    ca = LocalCA.load(layout_ca, data_dir / "tls" / "ca.key")
    cert, key, sha = issue_client_certificate(ca, "VIEWER", data_dir / "clients")
    foreign_dir = tmp_path_factory.mktemp("foreign")
    initialize(foreign_dir)
    foreign_ca = LocalCA.load(foreign_dir / "tls" / "ca.crt", foreign_dir / "tls" / "ca.key")
    with ExitStack() as peers:
        tls_dests: list[StorescpPeer] = []
        for aet, issuer in (("TLSDEST", ca), ("FOREIGN", foreign_ca)):
            workdir = tmp_path_factory.mktemp(aet.lower())
            dest_cert, dest_key, _ = issue_server_certificate(
                issuer, aet, workdir / "tls", ["127.0.0.1"]
            )
            # +tls: BCP 195 profile; a client certificate from our CA is required (-rc default)
            options = ("+tls", str(dest_key), str(dest_cert), "+cf", str(layout_ca))
            tls_dests.append(
                peers.enter_context(running_storescp(workdir, aet=aet, options=options))
            )
        _append_peers(
            data_dir / "pacsguard.toml",
            sha,
            storescp_peer,
            hash_secret(STORER_PASSWORD),
            tuple(tls_dests),
        )
        tls_port, plain_port = free_port(), free_port()
        settings = load_settings(
            data_dir / "pacsguard.toml",
            env={},
            overrides={"server.dimse_port": tls_port, "server.plaintext_port": plain_port},
        )
        running = start_archive(settings)
        try:
            a = Archive(
                running, data_dir, tls_port, plain_port, layout_ca, cert, key,
                tls_dest=tls_dests[0], foreign_dest=tls_dests[1],
            )  # fmt: skip
            a.loaded = store_lab(a, lab_data, "--user", "storer", "--password", STORER_PASSWORD)
            yield a
        finally:
            running.stop()


def dcmtk(tool: str, *args: str, timeout: float = 120.0) -> ToolOutcome:
    completed = run_tool([str(executable(tool)), "-v", *args], timeout=timeout)
    return ToolOutcome.from_completed(completed)


def tls_anonymous(a: Archive) -> list[str]:
    return ["+tla", "+cf", str(a.ca)]


def tls_client(a: Archive) -> list[str]:
    return ["+tls", str(a.viewer_key), str(a.viewer_cert), "+cf", str(a.ca)]


def store_lab(a: Archive, lab: LabData, *extra: str) -> ToolOutcome:
    return dcmtk(
        "storescu",
        *tls_anonymous(a),
        *extra,
        "-aet",
        "STORER",
        "-aec",
        a.ae_title,
        "+sd",
        "127.0.0.1",
        str(a.tls_port),
        str(lab.directory),
    )


def find_studies(a: Archive, out: Path, *, tls: list[str], aet: str, port: int) -> ToolOutcome:
    out.mkdir(parents=True, exist_ok=True)
    return dcmtk(
        "findscu",
        *tls,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
        "-k",
        "NumberOfStudyRelatedInstances",
        "-k",
        "PatientName",
        "-X",
        "-od",
        str(out),
        "-aet",
        aet,
        "-aec",
        a.ae_title,
        "127.0.0.1",
        str(port),
    )


def test_storescu_over_tls_with_user_identity_stores_everything(
    archive: Archive, lab_data: LabData, tmp_path: Path
) -> None:
    refused = store_lab(archive, lab_data)  # no --user: rejected before any C-STORE
    assert refused.rejection is not None and not refused.accepted
    wrong = store_lab(archive, lab_data, "--user", "storer", "--password", "wrong")
    assert wrong.rejection is not None
    archive.running.gate.forgive("127.0.0.1")  # two failures: keep the count below lockout
    stored = archive.loaded
    assert stored is not None and stored.ok, stored.log[-2000:] if stored else None
    assert "Received Store Response (Success)" in stored.log
    # Storing the same files again is an idempotent success (duplicate policy), and every
    # instance is in the index with its blob on disk, as fsck confirms.
    again = store_lab(archive, lab_data, "--user", "storer", "--password", STORER_PASSWORD)
    assert again.ok and "Received Store Response (Success)" in again.log
    from pacsguard.archive.fsck import run_fsck

    report = run_fsck(archive.running.index, archive.running.blobs, verify_hashes=True)
    assert report.ok and report.checked == lab_data.counts.instances


def test_findscu_with_client_certificate_sees_the_studies(
    archive: Archive, lab_data: LabData, tmp_path: Path
) -> None:
    outcome = find_studies(
        archive, tmp_path / "find", tls=tls_client(archive), aet="VIEWER", port=archive.tls_port
    )
    assert outcome.ok, outcome.log[-2000:]
    responses = [dcmread(p) for p in sorted((tmp_path / "find").iterdir())]
    assert len(responses) == lab_data.counts.studies
    assert sum(int(r.NumberOfStudyRelatedInstances) for r in responses) == (
        lab_data.counts.instances
    )
    echo = dcmtk(
        "echoscu", *tls_client(archive), "-aet", "VIEWER", "-aec", "PACSGUARD",
        "127.0.0.1", str(archive.tls_port),
    )  # fmt: skip
    assert echo.ok


def test_viewer_without_certificate_or_from_plaintext_is_rejected(
    archive: Archive, tmp_path: Path
) -> None:
    anonymous = find_studies(
        archive, tmp_path / "a", tls=tls_anonymous(archive), aet="VIEWER", port=archive.tls_port
    )
    assert anonymous.rejection is not None
    plaintext = find_studies(archive, tmp_path / "b", tls=[], aet="VIEWER", port=archive.plain_port)
    assert plaintext.rejection is not None
    archive.running.gate.forgive("127.0.0.1")


def test_viewer_may_not_store(archive: Archive, lab_data: LabData) -> None:
    one = next(iter(sorted(lab_data.directory.glob("*.dcm"))))
    outcome = dcmtk(
        "storescu", *tls_client(archive), "-aet", "VIEWER", "-aec", "PACSGUARD",
        "127.0.0.1", str(archive.tls_port), str(one),
    )  # fmt: skip
    # The storage context is refused for this principal: nothing is sent, nothing stored.
    assert "Received Store Response (Success)" not in outcome.log


def test_movescu_moves_a_study_into_the_registered_storescp(
    archive: Archive, lab_data: LabData, storescp_peer: StorescpPeer, tmp_path: Path
) -> None:
    study = lab_data.archive.patients[0].studies[0]
    before = set(storescp_peer.output_dir.rglob("*"))
    outcome = dcmtk(
        "movescu", "-S", "-aet", "RETRIEVER", "-aec", "PACSGUARD", "-aem", storescp_peer.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_instance_uid}",
        "127.0.0.1", str(archive.plain_port),
    )  # fmt: skip
    assert outcome.ok, outcome.log[-2000:]
    received = [p for p in set(storescp_peer.output_dir.rglob("*")) - before if p.is_file()]
    assert len(received) == study.instance_count
    uids = {str(dcmread(p).SOPInstanceUID) for p in received}
    assert uids == {i.sop_instance_uid for s in study.series for i in s.instances}


def test_movescu_moves_a_series_over_tls_into_a_verified_destination(
    archive: Archive, lab_data: LabData
) -> None:
    """movescu asks on loopback; the sub-association to TLSDEST is TLS, both sides verified."""
    study = lab_data.archive.patients[1].studies[0]
    series = study.series[0]
    dest = archive.tls_dest
    before = set(dest.output_dir.rglob("*"))
    outcome = dcmtk(
        "movescu", "-S", "-aet", "RETRIEVER", "-aec", "PACSGUARD", "-aem", dest.aet,
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study.study_instance_uid}",
        "-k", f"SeriesInstanceUID={series.series_instance_uid}",
        "127.0.0.1", str(archive.plain_port),
    )  # fmt: skip
    assert outcome.ok, outcome.log[-2000:]
    received = [p for p in set(dest.output_dir.rglob("*")) - before if p.is_file()]
    assert {str(dcmread(p).SOPInstanceUID) for p in received} == {
        i.sop_instance_uid for i in series.instances
    }


def test_move_to_a_tls_destination_with_an_untrusted_certificate_sends_nothing(
    archive: Archive, lab_data: LabData
) -> None:
    study = lab_data.archive.patients[1].studies[0]
    dest = archive.foreign_dest
    outcome = dcmtk(
        "movescu", "-S", "-aet", "RETRIEVER", "-aec", "PACSGUARD", "-aem", dest.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_instance_uid}",
        "127.0.0.1", str(archive.plain_port),
    )  # fmt: skip
    # A registered destination we cannot associate with securely: every sub-operation failed
    # (0xA702, PS3.4 C.4.2.1.5); 0xA801 is for destinations that are not registered.
    assert "Refused: OutOfResourcesSubOperations" in outcome.log, outcome.log[-2000:]
    assert [p for p in dest.output_dir.rglob("*") if p.is_file()] == []


def test_move_to_an_unregistered_destination_is_refused(
    archive: Archive, lab_data: LabData
) -> None:
    study = lab_data.archive.patients[0].studies[0]
    outcome = dcmtk(
        "movescu", "-S", "-aet", "RETRIEVER", "-aec", "PACSGUARD", "-aem", "NOWHERE",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_instance_uid}",
        "127.0.0.1", str(archive.plain_port),
    )  # fmt: skip
    assert "Refused: MoveDestinationUnknown" in outcome.log


def test_getscu_retrieves_a_series(archive: Archive, lab_data: LabData, tmp_path: Path) -> None:
    series = lab_data.archive.patients[1].studies[0].series[0]
    out = tmp_path / "get"
    out.mkdir()
    outcome = dcmtk(
        "getscu", "-S", "-aet", "RETRIEVER", "-aec", "PACSGUARD", "-od", str(out),
        "-k", "QueryRetrieveLevel=SERIES",
        "-k", f"StudyInstanceUID={lab_data.archive.patients[1].studies[0].study_instance_uid}",
        "-k", f"SeriesInstanceUID={series.series_instance_uid}",
        "127.0.0.1", str(archive.plain_port),
    )  # fmt: skip
    assert outcome.ok, outcome.log[-2000:]
    got = {str(dcmread(p).SOPInstanceUID) for p in out.iterdir()}
    assert got == {i.sop_instance_uid for i in series.instances}


def test_self_check_finds_nothing_high_and_audit_chain_verifies(
    archive: Archive, tmp_path: Path
) -> None:
    # A query of our own, so that this test does not depend on which tests ran before it.
    find_studies(
        archive, tmp_path / "f", tls=tls_client(archive), aet="VIEWER", port=archive.tls_port
    )
    reports = self_check(archive.running)
    level = worst(reports)
    assert level is None or level.rank < Severity.HIGH.rank, [
        (str(r.observations.target), [f.id for f in r.findings]) for r in reports
    ]
    tls_report = next(r for r in reports if r.observations.target.port == archive.tls_port)
    assert tls_report.findings == ()
    audit = archive.running.settings.audit.log_path
    result = verify(audit)
    assert result.ok, result.problems
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"application-start", "association", "store", "query"} <= kinds
    # Rejected associations are audited with their reason, never with patient values.
    text = audit.read_text()
    assert "rejected" in text
    for patient in ("Synthetic",):
        assert patient not in text


def test_application_logs_carry_no_patient_names(
    archive: Archive, lab_data: LabData, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    find_studies(
        archive, tmp_path / "f", tls=tls_client(archive), aet="VIEWER", port=archive.tls_port
    )
    names = {p.name.split("^")[0] for p in lab_data.archive.patients}
    assert names
    for name in names:
        assert name not in caplog.text
    shutil.rmtree(tmp_path / "f", ignore_errors=True)
