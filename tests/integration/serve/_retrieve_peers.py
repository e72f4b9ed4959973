"""Peers for the retrieve tests: C-MOVE destinations and a requesting SCU, all pynetdicom on
loopback, and one synthetic study loaded into the archive through the wire."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsguard.archive.app import RunningArchive
from pacsguard.lab.synth import build_dataset, generate_archive

from .conftest import TESTER, StartArchive, make_data_dir

#: One patient, one study, one series of four instances.
LAB = generate_archive(
    29, 1, studies_per_patient=(1, 1), series_per_study=(1, 1), instances_per_series=(4, 4)
)
PATIENT = LAB.patients[0]
STUDY = PATIENT.studies[0]
SERIES = STUDY.series[0]
UIDS = [instance.sop_instance_uid for instance in SERIES.instances]
SOP_CLASS = SERIES.instances[0].sop_class_uid
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
FIND = StudyRootQueryRetrieveInformationModelFind
#: Long enough for every test here on a loaded machine; the archive's own timeouts are shorter.
CLIENT_TIMEOUT = 60


class Destination:
    """A pynetdicom storage SCP on an ephemeral loopback port, registered with the archive as a
    C-MOVE destination. The test sets how it answers: `status` per instance (1-based), `abort_at`
    (A-ABORT when that instance arrives), `delay` per instance, `hold_at` (signal `arrived`,
    then wait for `release`), or `calling` (accept only those calling AE titles)."""

    def __init__(self, aet: str, *, calling: list[str] | None = None) -> None:
        self.aet = aet
        self.received: list[str] = []
        self.status: dict[int, int] = {}
        self.abort_at: int | None = None
        self.delay: dict[int, float] = {}
        self.hold_at: int | None = None
        self.arrived = threading.Event()
        self.release = threading.Event()
        ae = AE(ae_title=aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT
        if calling is not None:
            ae.require_calling_aet = calling
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = int(self._server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        number = len(self.received) + 1
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        if number == self.hold_at:
            self.arrived.set()
            self.release.wait(CLIENT_TIMEOUT)
        if number == self.abort_at:
            event.assoc.abort()
            return 0xA700
        time.sleep(self.delay.get(number, 0.0))
        return self.status.get(number, 0x0000)

    def config(self) -> str:
        return f"""
[[ae]]
ae_title = "{self.aet}"
auth = "address"
address = "127.0.0.1"
port = {self.port}
move_destination = true
permissions = []
"""

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()


def unreachable_destination(aet: str, port: int) -> str:
    """The [[ae]] entry of a registered destination where nothing listens."""
    return f"""
[[ae]]
ae_title = "{aet}"
auth = "address"
address = "127.0.0.1"
port = {port}
move_destination = true
permissions = []
"""


def datasets() -> list[Dataset]:
    return [build_dataset(PATIENT, STUDY, SERIES, instance) for instance in SERIES.instances]


def start_loaded(
    start: StartArchive, data_dir: Path, extra_config: str = "", **overrides: object
) -> RunningArchive:
    """An archive with TESTER and `extra_config` registered, holding the lab study."""
    archive = start(make_data_dir(data_dir, extra_config=TESTER + extra_config), **overrides)
    load(archive)
    return archive


def load(archive: RunningArchive) -> None:
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(SOP_CLASS, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT
    endpoint = next(e for e in archive.endpoints if not e.tls)
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        for ds in datasets():
            status = assoc.send_c_store(ds)
            assert status is not None and int(status.Status) == 0x0000
    finally:
        assoc.release()


StoreHandler = Callable[[evt.Event], int]


@contextmanager
def requester(
    archive: RunningArchive, *, on_store: StoreHandler | None = None, get_role: bool = True
) -> Iterator[Association]:
    """An association from TESTER: find, move, get, echo, and (with `get_role`) the study's
    storage class in the SCP role for C-GET sub-operations, answered by `on_store`."""
    ae = AE(ae_title="TESTER")
    for model in (MOVE, GET, FIND, Verification):
        ae.add_requested_context(model)
    roles = []
    if get_role:
        ae.add_requested_context(SOP_CLASS, ExplicitVRLittleEndian)
        roles.append(build_role(SOP_CLASS, scp_role=True))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT

    def accept_all(event: evt.Event) -> int:
        return 0x0000

    endpoint = next(e for e in archive.endpoints if not e.tls)
    assoc = ae.associate(
        endpoint.host,
        endpoint.port,
        ae_title="PACSGUARD",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store or accept_all)],
    )
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def study_identifier() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = STUDY.study_instance_uid
    return query


Response = tuple[Dataset, Dataset | None]


def move(assoc: Association, destination: str, query: Dataset | None = None) -> list[Response]:
    responses = list(assoc.send_c_move(query or study_identifier(), destination, MOVE))
    assert responses and all(status is not None for status, _ in responses)
    return responses


def get(assoc: Association, query: Dataset | None = None) -> list[Response]:
    responses = list(assoc.send_c_get(query or study_identifier(), GET))
    assert responses and all(status is not None for status, _ in responses)
    return responses


def counts(status: Dataset) -> tuple[int | None, int, int, int]:
    """(remaining or None, completed, failed, warning) of a C-GET / C-MOVE response."""
    remaining = status.get("NumberOfRemainingSuboperations")
    return (
        None if remaining is None else int(remaining),
        int(status.NumberOfCompletedSuboperations),
        int(status.NumberOfFailedSuboperations),
        int(status.NumberOfWarningSuboperations),
    )


def failed_uids(identifier: Dataset | None) -> list[str]:
    assert identifier is not None, "final response without an identifier"
    value = identifier.FailedSOPInstanceUIDList
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def assert_still_up(assoc: Association) -> None:
    """The requesting association survived: it still answers C-ECHO."""
    assert assoc.is_established
    echo = assoc.send_c_echo()
    assert echo is not None and int(echo.Status) == 0x0000


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 30.0) -> None:
    """Until the archive (in this process) has logged `text`: it has acted on what we sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in record.getMessage() for record in list(caplog.records)):
            return
        time.sleep(0.02)
    raise AssertionError(f"the archive did not log {text!r} within {timeout}s")


def cancel_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pacsguard.archive.dimse.aio_session")
