"""The archive through the wire with pynetdicom as the client: bad input, TLS, both halves."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from pacsguard.archive.app import Endpoint, RunningArchive
from pacsguard.archive.fsck import run_fsck
from pacsguard.archive.selfcheck import self_check, worst
from pacsguard.dicom import uids
from pacsguard.dicom.client import Timeouts, request_association
from pacsguard.dicom.dimse import encode_dataset
from pacsguard.dicom.ul import AssociationRejected, propose
from pacsguard.errors import ConfigError
from pacsguard.lab.synth import build_dataset, generate_archive
from pacsguard.scan.model import Severity

from .conftest import StartArchive, make_data_dir, open_as_tester


def plain(archive: RunningArchive) -> Endpoint:
    return next(e for e in archive.endpoints if not e.tls)


def tls_endpoint(archive: RunningArchive) -> Endpoint:
    return next(e for e in archive.endpoints if e.tls)


def client(calling: str = "TESTER") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def audit_events(archive: RunningArchive) -> list[dict[str, object]]:
    path = archive.settings.audit.log_path
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def good_dataset(seed: int = 5) -> Dataset:
    lab = generate_archive(seed, 1, studies_per_patient=(1, 1), series_per_study=(1, 1))
    patient = lab.patients[0]
    study = patient.studies[0]
    series = study.series[0]
    return build_dataset(patient, study, series, series.instances[0])


def store(archive: RunningArchive, ds: Dataset | Path) -> int:
    endpoint = plain(archive)
    assoc = client().associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def test_valid_instance_is_stored_and_found(start: StartArchive) -> None:
    archive = start()
    ds = good_dataset()
    assert store(archive, ds) == 0x0000
    assert archive.index.get(str(ds.SOPInstanceUID)) is not None
    endpoint = plain(archive)
    assoc = client().associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ds.PatientID
    query.NumberOfStudyRelatedInstances = ""
    responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    pending = [r for status, r in responses if status and status.Status == 0xFF00]
    assert len(pending) == 1
    assert pending[0].NumberOfStudyRelatedInstances == 1
    assert responses[-1][0].Status == 0x0000


def raw_store(archive: RunningArchive, data_set: bytes, sop_instance_uid: str) -> int:
    """C-STORE exactly these bytes (malformed included) through the plaintext listener."""
    endpoint = plain(archive)

    async def go() -> int:
        assoc = await open_as_tester(endpoint.port, [uids.CT_IMAGE_STORAGE])
        context = assoc.accepted.accepted_context(uids.CT_IMAGE_STORAGE)
        assert context is not None and context.transfer_syntax is not None
        try:
            return await assoc.store(context, sop_instance_uid, data_set)
        finally:
            await assoc.release()

    return asyncio.run(go())


@contextmanager
def lenient_pydicom() -> Iterator[None]:
    """Let the test build invalid values (what a broken or hostile sender would send)."""
    settings = config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def encoded(ds: Dataset) -> bytes:
    return encode_dataset(ds, uids.EXPLICIT_VR_LITTLE_ENDIAN).getvalue()


def assert_nothing_stored(archive: RunningArchive) -> None:
    assert list(archive.blobs.keys()) == []
    assert run_fsck(archive.index, archive.blobs, verify_hashes=True).checked == 0
    stores = [e for e in audit_events(archive) if e["event"] == "store"]
    assert stores and all(e["outcome"] != 0 for e in stores)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyInstanceUID", None),
        ("SOPInstanceUID", "1.2.3/../../../etc/passwd"),
        ("SeriesInstanceUID", "1.2..3"),
        ("StudyInstanceUID", "1." + "2" * 80),
    ],
    ids=["missing-study-uid", "traversal-sop-uid", "double-dot-uid", "oversized-uid"],
)
def test_bad_uids_are_refused_stored_nowhere_and_audited(
    start: StartArchive, keyword: str, value: str | None
) -> None:
    archive = start()
    ds = good_dataset()
    command_uid = str(ds.SOPInstanceUID)
    with lenient_pydicom():
        delattr(ds, keyword)  # a new element takes the lenient mode; an old one keeps its own
        if value is not None:
            setattr(ds, keyword, value)
        data = encoded(ds)
    assert raw_store(archive, data, command_uid) == 0xC000
    assert_nothing_stored(archive)
    assert not list(Path(archive.settings.storage.data_dir).rglob("passwd"))


def test_undecodable_data_set_bytes_are_refused(start: StartArchive) -> None:
    archive = start()
    ds = good_dataset()
    data = encoded(ds)
    # An element header announcing 1 GB of value where 40 bytes follow, then garbage.
    broken = data[:60] + b"\x10\x00\x10\x00PN\xff\xff" + b"\xfe" * 40
    assert raw_store(archive, broken, str(ds.SOPInstanceUID)) == 0xC000
    assert_nothing_stored(archive)


def test_data_set_not_matching_the_command_is_refused(start: StartArchive) -> None:
    archive = start()
    ds = good_dataset()
    assert raw_store(archive, encoded(ds), "1.2.3.4.5") == 0xA900
    assert_nothing_stored(archive)


def test_oversized_object_is_refused_with_out_of_resources(start: StartArchive) -> None:
    archive = start()
    archive.service.limits = type(archive.service.limits)(max_object_bytes=256)
    status = store(archive, good_dataset())
    assert status == 0xA700
    assert_nothing_stored(archive)


def test_duplicate_policy(start: StartArchive) -> None:
    archive = start()
    ds = good_dataset()
    assert store(archive, ds) == 0x0000
    assert store(archive, ds) == 0x0000  # identical retry: success, nothing changes
    ds.StudyDescription = "CHANGED"
    assert store(archive, ds) == 0x0111  # same UID, different content: refused
    assert run_fsck(archive.index, archive.blobs, verify_hashes=True).ok


def test_unknown_calling_ae_and_missing_identity_are_rejected(start: StartArchive) -> None:
    archive = start()
    endpoint = plain(archive)
    stranger = client("STRANGER").associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert stranger.is_rejected
    admin = client("ADMIN").associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert admin.is_rejected  # ADMIN must send a user identity item; pynetdicom would accept
    reasons = [
        e["detail"]["reason"]  # type: ignore[index]
        for e in audit_events(archive)
        if e["event"] == "association" and e["detail"]["result"] == "rejected"  # type: ignore[index]
    ]
    assert any("not registered" in str(r) for r in reasons)
    assert any("user identity" in str(r) or "passcode" in str(r) for r in reasons)


def test_silent_tls_client_does_not_block_other_associations(start: StartArchive) -> None:
    archive = start()
    endpoint = tls_endpoint(archive)
    silent = [socket.create_connection((endpoint.host, endpoint.port)) for _ in range(3)]
    try:
        context = ssl.create_default_context(cafile=str(archive.settings.tls.ca_file))
        context.check_hostname = False

        async def associate() -> float:
            started = time.monotonic()
            answer, assoc = await request_association(
                endpoint.host,
                endpoint.port,
                calling_ae="TESTER",
                called_ae="PACSGUARD",
                contexts=propose([uids.VERIFICATION]),
                timeouts=Timeouts(connect=2.0, read=3.0),
                tls=context,
            )
            if assoc is not None:
                await assoc.release()
            # TESTER is bound to its address and accepted: the accept loop was not blocked.
            assert not isinstance(answer, AssociationRejected)
            return time.monotonic() - started

        elapsed = asyncio.run(associate())
        assert elapsed < archive.settings.server.handshake_timeout_s
    finally:
        for sock in silent:
            sock.close()


def test_secure_default_self_check_has_nothing_high(start: StartArchive) -> None:
    archive = start()
    store(archive, good_dataset())
    reports = self_check(archive)
    level = worst(reports)
    assert level is None or level.rank < Severity.HIGH.rank
    tls_report = next(r for r in reports if r.observations.tls)
    assert tls_report.findings == ()
    assert tls_report.observations.accepted_called_aets == ()


def test_lab_profile_is_found_open_by_the_scanner(start: StartArchive, tmp_path: Path) -> None:
    archive = start(make_data_dir(tmp_path / "lab", extra_config=""), profile="lab")
    store(archive, good_dataset())
    reports = self_check(archive)
    found = {f.id for r in reports for f in r.findings}
    assert {"PG-DIMSE-ANON-ASSOC", "PG-DIMSE-ANON-FIND", "PG-DIMSE-PHI-EXPOSED"} <= found
    exposure = next(r for r in reports if not r.observations.tls).observations.exposure
    assert exposure is not None and (exposure.studies, exposure.instances) == (1, 1)


def test_lab_profile_and_plaintext_refuse_non_loopback(start: StartArchive, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        start(make_data_dir(tmp_path / "a"), profile="lab", **{"server.host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="loopback"):
        start(make_data_dir(tmp_path / "b"), **{"server.plaintext_host": "0.0.0.0"})


@pytest.mark.parametrize(
    ("charset", "name"),
    [("ISO_IR 192", "Müller^Zoë"), ("ISO_IR 100", "Müller^Zoe"), (None, "Plain^Ascii")],
)
def test_names_in_common_character_sets_are_indexed_as_text(
    start: StartArchive, charset: str | None, name: str
) -> None:
    archive = start()
    ds = good_dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    assert store(archive, ds) == 0x0000
    record = archive.index.get(str(ds.SOPInstanceUID))
    assert record is not None and record.patient_name == name


def test_crash_recovery_runs_only_after_an_unclean_stop(
    start: StartArchive, tmp_path: Path
) -> None:
    data_dir = make_data_dir(tmp_path / "recover")
    first = start(data_dir)
    marker = Path(first.settings.storage.data_dir) / "archive.running"
    assert marker.exists()
    first.stop()
    assert not marker.exists()  # clean stop
    orphan = "1.2.826.0.1.3680043.8.498.1"
    with (tmp_path / "orphan").open("w+b") as f:
        f.write(b"never acknowledged")
        f.seek(0)
        first.blobs.put(orphan, f)
    # Clean last stop: no scan, the orphan stays (fsck would report it).
    second = start(data_dir)
    assert second.blobs.exists(orphan)
    second.stop()
    # Unclean last stop (the marker survived a crash): recovery removes the orphan.
    marker.touch()
    third = start(data_dir)
    assert not third.blobs.exists(orphan)
    assert run_fsck(third.index, third.blobs, verify_hashes=True).ok
