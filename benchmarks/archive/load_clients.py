"""The sustained-load benchmark's clients: pynetdicom, one process per client.

Each client is its own process (so the clients' Python does not share a GIL with each other or
with the server) and runs association after association until the deadline: a storing client
sends one new study of `per_association` small images per association, a querying client asks
`per_association` study-level C-FINDs by Patient ID per association. Every client connects
from its own loopback source address (127.0.0.x), as separate modalities and viewers would.
Timed with `time.perf_counter`: association set-up (connect, TLS handshake, A-ASSOCIATE-RQ to
A-ASSOCIATE-AC: `AE.associate`) and each operation (request to final response). pynetdicom is
used as a user would (its defaults: Nagle on, a 1 ms reactor poll), so its own overhead is in
the numbers for every target alike.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

from pacsguard.lab.synth import SyntheticPatient, build_dataset, generate_archive

#: Patients the stored studies belong to, and the queries ask for.
PATIENTS = 40
MATRIX = 64
SUCCESS = 0x0000
PENDING = frozenset({0xFF00, 0xFF01})
#: Failures kept verbatim per client (all are counted).
_KEEP_FAILURES = 20


@dataclass(frozen=True)
class ClientSpec:
    """What one client process does; picklable."""

    role: str  # "store" or "find"
    index: int
    host: str
    port: int
    called_ae: str
    calling_ae: str
    source_address: str
    username: str | None
    password: str | None
    ca_file: str | None  # TLS when set
    start_at: float  # time.time() at which every client starts
    duration_s: float
    per_association: int
    seed: int


@dataclass
class ClientResult:
    role: str
    index: int
    setup_s: list[float] = field(default_factory=list)
    op_s: list[float] = field(default_factory=list)
    associations: int = 0
    operations: int = 0
    failures: int = 0
    failure_notes: list[str] = field(default_factory=list)
    client_log: list[str] = field(default_factory=list)
    #: Requests whose response pynetdicom's reactor took (see _KeepWarnings): SOP Instance
    #: UIDs of such C-STOREs, and the count of such C-FINDs. Counted in `failures` too; the
    #: orchestrator checks against the audit log whether the server did its part.
    lost_store_responses: list[str] = field(default_factory=list)
    lost_find_responses: int = 0
    #: Acknowledged stores: (study, series, SOP instance) UIDs.
    stored: list[tuple[str, str, str]] = field(default_factory=list)
    matches: int = 0
    cpu_s: float = 0.0

    def fail(self, note: str) -> None:
        self.failures += 1
        if len(self.failure_notes) < _KEEP_FAILURES:
            self.failure_notes.append(f"client {self.index} at {_now():.1f} s: {note}")


class _KeepWarnings(logging.Handler):
    """pynetdicom's own warnings and errors, kept as notes (they explain a failure)."""

    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes

    #: "Received unexpected ... service message": pynetdicom's own reactor thread took a
    #: response off the queue before the thread that sent the request could (a race in
    #: pynetdicom's requestor, pydicom/pynetdicom#875); the request then times out.
    unexpected = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Received unexpected" in record.getMessage():
            self.unexpected += 1
        if len(self.notes) < _KEEP_FAILURES:
            self.notes.append(f"at {_now():.1f} s pynetdicom: {record.getMessage()[:200]}")


_started = [0.0]


def _now() -> float:
    return time.monotonic() - _started[0]


def patients(seed: int) -> tuple[SyntheticPatient, ...]:
    archive = generate_archive(
        seed, PATIENTS, studies_per_patient=(1, 1), series_per_study=(1, 1),
        instances_per_series=(1, 1),
    )  # fmt: skip
    return archive.patients


def _ae(spec: ClientSpec) -> AE:
    ae = AE(ae_title=spec.calling_ae)
    ae.acse_timeout = 30
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    return ae


@functools.cache
def _tls_context(ca_file: str) -> ssl.SSLContext:
    """One per client process, as a real client holds one (not re-read per association)."""
    return ssl.create_default_context(cafile=ca_file)


def _associate(ae: AE, spec: ClientSpec, result: ClientResult) -> Any:
    """An association, or None (counted as a failure)."""
    kwargs: dict[str, Any] = {"bind_address": (spec.source_address, 0)}
    if spec.ca_file is not None:
        kwargs["tls_args"] = (_tls_context(spec.ca_file), spec.host)
    if spec.username is not None and spec.password is not None:
        kwargs["ext_neg"] = [identity_item(spec.username, spec.password)]
    started = time.perf_counter()
    assoc = ae.associate(spec.host, spec.port, ae_title=spec.called_ae, **kwargs)
    elapsed = time.perf_counter() - started
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        result.fail(f"association {why} after {elapsed * 1000:.0f} ms")
        return None
    result.setup_s.append(elapsed)
    result.associations += 1
    only_the_sender_takes_responses(assoc)
    return assoc


def only_the_sender_takes_responses(assoc: Any) -> None:
    """Close a race in pynetdicom's requestor (pydicom/pynetdicom#875): its reactor thread
    polls the DIMSE queue without blocking, and when the peer answers fast it can take a
    response before the thread that sent the request gets to it, logs "Received unexpected
    C-STORE service message", and the request times out although it was answered (seen here:
    a few C-STOREs per minute, each stored and audited by the server; a pending C-FIND
    response taken that way is a match silently missing from the answer). These clients never
    serve requests (no C-GET), so only blocking reads, the sender's, may take a message;
    what goes over the wire is unchanged."""
    take = assoc.dimse.get_msg

    def sender_only(block: bool = False) -> Any:
        return take(block=True) if block else (None, None)

    assoc.dimse.get_msg = sender_only


def identity_item(username: str, password: str) -> Any:
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = username.encode()
    item.secondary_field = password.encode()
    return item


def run_client(spec: ClientSpec) -> ClientResult:
    """Run one client until its deadline (in its own process)."""
    result = ClientResult(spec.role, spec.index)
    logger = logging.getLogger("pynetdicom")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    watcher = _KeepWarnings(result.client_log)
    logger.addHandler(watcher)
    cpu_before = time.process_time()
    ae = _ae(spec)
    try:
        if spec.role == "store":
            _store_loop(ae, spec, result, watcher)
        else:
            _find_loop(ae, spec, result, watcher)
    finally:
        logger.removeHandler(watcher)
    result.cpu_s = time.process_time() - cpu_before  # the process's: one client per process
    return result


def _wait_start(spec: ClientSpec) -> float:
    time.sleep(max(0.0, spec.start_at - time.time()))
    _started[0] = time.monotonic()
    return _started[0] + spec.duration_s


def _store_loop(ae: AE, spec: ClientSpec, result: ClientResult, watcher: _KeepWarnings) -> None:
    people = patients(spec.seed)
    templates = []
    for patient in people:
        study = patient.studies[0]
        series = study.series[0]
        ds = build_dataset(patient, study, series, series.instances[0], rows=MATRIX, columns=MATRIX)
        templates.append(ds)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in templates}):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    rng = random.Random(spec.seed * 1000 + spec.index)
    deadline = _wait_start(spec)
    number = 0
    while time.monotonic() < deadline:
        assoc = _associate(ae, spec, result)
        if assoc is None:
            time.sleep(0.05)
            continue
        template = templates[rng.randrange(len(templates))]
        entropy = [str(spec.seed), "load", str(spec.index), str(number)]
        study_uid = str(generate_uid(prefix=None, entropy_srcs=[*entropy, "study"]))
        series_uid = str(generate_uid(prefix=None, entropy_srcs=[*entropy, "series"]))
        number += 1
        try:
            for instance in range(spec.per_association):
                sop_uid = str(generate_uid(prefix=None, entropy_srcs=[*entropy, str(instance)]))
                ds = _instance(template, study_uid, series_uid, sop_uid, instance + 1)
                unexpected = watcher.unexpected
                started = time.perf_counter()
                status = assoc.send_c_store(ds)
                elapsed = time.perf_counter() - started
                code = int(status.Status) if status and "Status" in status else None
                result.operations += 1
                if code == SUCCESS:
                    result.op_s.append(elapsed)
                    result.stored.append((study_uid, series_uid, sop_uid))
                else:
                    if code is None and watcher.unexpected > unexpected:
                        result.lost_store_responses.append(sop_uid)
                    result.fail(
                        f"C-STORE of {sop_uid} after {elapsed * 1000:.0f} ms: status "
                        f"{_hex(code)} ({assoc.is_established=})"
                    )
                    if not assoc.is_established:
                        break
        finally:
            if assoc.is_established:
                assoc.release()


def _instance(
    template: Dataset, study_uid: str, series_uid: str, sop_uid: str, number: int
) -> Dataset:
    ds = Dataset()
    ds.update(template)
    ds.file_meta = template.file_meta
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = number
    return ds


def _find_loop(ae: AE, spec: ClientSpec, result: ClientResult, watcher: _KeepWarnings) -> None:
    people = patients(spec.seed)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    rng = random.Random(spec.seed * 1000 + spec.index)
    deadline = _wait_start(spec)
    while time.monotonic() < deadline:
        assoc = _associate(ae, spec, result)
        if assoc is None:
            time.sleep(0.05)
            continue
        try:
            for _ in range(spec.per_association):
                query = Dataset()
                query.QueryRetrieveLevel = "STUDY"
                query.PatientID = people[rng.randrange(len(people))].patient_id
                query.StudyInstanceUID = ""
                query.StudyDate = ""
                query.PatientName = ""
                unexpected = watcher.unexpected
                ok, matches = find(assoc, query)
                result.operations += 1
                if ok is None:
                    result.op_s.append(matches[1])
                    result.matches += matches[0]
                else:
                    if watcher.unexpected > unexpected:
                        result.lost_find_responses += 1
                    result.fail(ok)
                    if not assoc.is_established:
                        break
        finally:
            if assoc.is_established:
                assoc.release()


def find(assoc: Any, query: Dataset) -> tuple[str | None, tuple[int, float]]:
    """(None, (matches, seconds)) or (why it failed, ...)."""
    count = 0
    started = time.perf_counter()
    for status, _identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(status.Status) if status and "Status" in status else None
        if code in PENDING:
            count += 1
            continue
        elapsed = time.perf_counter() - started
        if code == SUCCESS:
            return None, (count, elapsed)
        return f"C-FIND status {_hex(code)}", (count, elapsed)
    return "C-FIND without a final response", (count, time.perf_counter() - started)


def _hex(code: int | None) -> str:
    return "none (no response)" if code is None else f"0x{code:04X}"
