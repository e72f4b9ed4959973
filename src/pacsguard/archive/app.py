"""The archive's composition root: settings in, a running archive out.

Everything is built here once and passed to constructors (no module-level state): audit sinks,
index, blob store, gate, service, the `Runtime` (one event loop, one pool for archive work,
one for the gate) and the front ends on it: DIMSE first, then any other `FrontEnd` a
`FrontEndFactory` builds from the running archive (the DICOMweb front end), all on the same
loop and pools. `serve`, the tests and the self-check all start the archive through
`start_archive`.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy.engine import make_url

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.log import AuditLog
from pacsguard.archive.audit.notify import AuditFanout
from pacsguard.archive.audit.patients import PatientKey
from pacsguard.archive.audit.syslog import SyslogSink
from pacsguard.archive.blobs.folder import FolderBlobStore
from pacsguard.archive.config import Settings, is_loopback, require_files, validate_listen
from pacsguard.archive.control import MARKER, write_marker
from pacsguard.archive.dimse.aio import AsyncDimseFrontEnd, Listener
from pacsguard.archive.dimse.contexts import FrontEndSettings
from pacsguard.archive.dimse.handoff import WorkerHandoff
from pacsguard.archive.dimse.identifiers import DestinationLookup, MoveDestination
from pacsguard.archive.dimse.slots import SlotCounter
from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.journal import keep_values_out_of_logs
from pacsguard.archive.recovery import recover
from pacsguard.archive.runtime import Endpoint, FrontEnd, Runtime
from pacsguard.archive.security.bearer_jwt import jwks_verifier
from pacsguard.archive.security.bootstrap import derive_index_key, load_at_rest_key
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.security.lockout import LockoutCounter
from pacsguard.archive.security.tls import client_capable, client_context, server_context
from pacsguard.archive.security.verifiers import TokenVerifier, static_key_verifier
from pacsguard.archive.service import ArchiveService, ServiceLimits
from pacsguard.archive.staging import STAGING_FOLDER, StagingArea
from pacsguard.archive.tokens import ApiTokens
from pacsguard.errors import ConfigError

if TYPE_CHECKING:
    from pacsguard.archive.web import WebFrontEnd

log = logging.getLogger(__name__)


@dataclass
class RunningArchive:
    settings: Settings
    service: ArchiveService
    index: SqlIndex
    blobs: FolderBlobStore
    audit: AuditSink
    gate: Gate
    runtime: Runtime
    endpoints: list[Endpoint] = field(default_factory=list)
    _front_ends: list[FrontEnd] = field(default_factory=list)
    _closers: list[object] = field(default_factory=list)
    _marker: Path | None = None
    _destinations: DestinationLookup | None = None
    #: Whether this process announces the archive's start and stop in the audit log (not a
    #: worker: its supervisor does).
    _announce: bool = True

    def move_destination(self, ae_title: str) -> MoveDestination | None:
        """Where C-MOVE may send, by the settings in force (they change on reload)."""
        return None if self._destinations is None else self._destinations(ae_title)

    def prepare_settings(self, settings: Settings) -> Callable[[], None]:
        """For `pacsguard reload`: build what `settings` needs (move destinations' TLS
        contexts, the gate's JWT key), raising ConfigError if it cannot; return the swap."""
        destinations = move_destinations(settings)
        swap_gate = self.gate.prepare_settings(settings)

        def swap() -> None:
            swap_gate()
            self._destinations = destinations
            self.settings = settings

        return swap

    @property
    def front_ends(self) -> tuple[FrontEnd, ...]:
        """The front ends running, in the order they started (DIMSE first)."""
        return tuple(self._front_ends)

    def start_front_end(self, front_end: FrontEnd) -> list[Endpoint]:
        """Start `front_end` on the runtime's loop; its endpoints join `endpoints`. Stopped
        with the archive, before the front ends started earlier."""
        self._front_ends.append(front_end)
        endpoints = list(self.runtime.run(front_end.start()))
        self.endpoints.extend(endpoints)
        return endpoints

    def stop(self) -> None:
        """Stop the front ends (the last started first) and the runtime, then close the index
        and the audit sinks (in that order)."""
        while self._front_ends:
            front_end = self._front_ends.pop()
            try:
                self.runtime.run(front_end.stop())
            except Exception:
                log.exception("a front end did not stop cleanly")
        self.runtime.close()
        if self._announce:  # not in a worker: its supervisor announces the stop
            with suppress(Exception):
                self.audit.emit(
                    AuditEvent(
                        EventType.APPLICATION_STOP,
                        EventAction.EXECUTE,
                        EventOutcome.SUCCESS,
                        (Participant(ae_title=self.settings.server.ae_title, requestor=False),),
                    )
                )
        self.index.close()
        if self._marker is not None:  # a clean stop: the next start skips crash recovery
            self._marker.unlink(missing_ok=True)
        close_all(self._closers)


def close_all(closers: list[object]) -> None:
    """Close each of `closers` that has a `close`; one failing does not stop the others."""
    for closer in closers:
        close = getattr(closer, "close", None)
        if callable(close):
            with suppress(Exception):
                close()


def move_destinations(settings: Settings) -> DestinationLookup:
    """Where C-MOVE may send: registered destinations, with a TLS client context for those
    with move_tls (built now, so that a bad CA or certificate stops the start)."""
    contexts: dict[str, ssl.SSLContext] = {}
    for ae in settings.aes:
        if ae.move_destination and ae.move_tls:
            ca = settings.move_ca(ae)
            try:
                contexts[ae.ae_title] = client_context(
                    ca,
                    settings.tls.cert_file,
                    settings.tls.key_file,
                    min_version=settings.tls.min_version,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    f"ae {ae.ae_title}: move_tls needs a readable CA ({ca}) and our "
                    f"certificate and key (tls.cert_file, tls.key_file): {exc}"
                ) from None
    if contexts and not client_capable(settings.tls.cert_file):
        log.warning(
            "tls.cert_file %s is not valid for TLS clients (no clientAuth extended key usage): "
            "move_tls destinations that ask for a client certificate will refuse it; move it "
            "and its key aside and run `pacsguard init` to issue one that is",
            settings.tls.cert_file,
        )

    def lookup(ae_title: str) -> MoveDestination | None:
        address = settings.move_address(ae_title)
        if address is None:
            return None
        return MoveDestination(address[0], address[1], contexts.get(ae_title.strip()))

    return lookup


def open_storage(settings: Settings) -> tuple[SqlIndex, FolderBlobStore]:
    """The index and blob store the settings name (also used by `fsck`). With encryption at
    rest, blobs and an SQLite index are encrypted under keys derived from storage.key_file."""
    key = load_at_rest_key(settings.storage.key_file) if settings.storage.encrypt_at_rest else None
    settings.storage.blob_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    blobs = FolderBlobStore(settings.storage.blob_dir, encryption_key=key)
    index = SqlIndex(
        settings.storage.index_url,
        key=None if key is None else derive_index_key(key),
        shared_writers=settings.server.workers > 1,
        background_checkpoints=settings.server.workers > 1,
    )
    warning = index_transport_warning(settings.storage.index_url)
    if warning is not None:
        log.warning("%s", warning)
    return index, blobs


#: libpq sslmodes that verify the server's certificate; anything less can be intercepted.
_VERIFIED_SSLMODES: Final = frozenset({"verify-ca", "verify-full"})


def index_transport_warning(index_url: str) -> str | None:
    """Why the connection to the index may carry patient data unprotected, or None: a
    PostgreSQL server off this machine reached without verified TLS (README: PostgreSQL).
    Names the host only, never the URL (it may hold a password)."""
    url = make_url(index_url)
    if url.get_backend_name() != "postgresql":
        return None
    query = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()}
    host = url.host or query.get("host")
    if host is None or host.startswith("/") or is_loopback(host):
        return None  # a Unix socket or this machine
    if query.get("sslmode") in _VERIFIED_SSLMODES:
        return None
    return (
        f"storage.index_url: the PostgreSQL server {host} is reached without verified TLS, so "
        "patient data in the index crosses the network unprotected or to an unverified peer; "
        "add ?sslmode=verify-full&sslrootcert=/path/to/ca.crt to index_url (README: PostgreSQL)"
    )


def index_key(settings: Settings) -> bytes | None:
    """The SQLCipher key of the settings' SQLite index; None without encryption at rest."""
    if not settings.storage.encrypt_at_rest:
        return None
    return derive_index_key(load_at_rest_key(settings.storage.key_file))


def audit_patient_key(settings: Settings) -> PatientKey | None:
    """The key that turns Patient IDs into audit references (`audit.patients`): derived from
    storage.key_file, which also exists with encrypt_at_rest = false when `pacsguard init` made
    it. None without a key file: audit events then name no patient, never one in clear."""
    key_file = settings.storage.key_file
    if not settings.storage.encrypt_at_rest and not key_file.exists():
        return None
    return PatientKey(load_at_rest_key(key_file))


def open_audit(settings: Settings) -> tuple[AuditSink, list[object]]:
    Path(settings.audit.log_path).parent.mkdir(parents=True, exist_ok=True)
    audit_log = AuditLog(settings.audit.log_path, fsync=settings.audit.fsync)
    copies: list[AuditSink] = []
    if settings.audit.syslog.enabled:
        copies.append(SyslogSink(settings.audit.syslog, source_id=settings.server.ae_title))
    closers: list[object] = [audit_log, *copies]
    return AuditFanout(audit_log, copies), closers


#: Builds a front end for a running archive (its service, gate, audit, runtime, settings).
FrontEndFactory = Callable[["RunningArchive"], FrontEnd]


def jwt_verifier(settings: Settings) -> TokenVerifier | None:
    """The gate's JWT verifier: the issuer's JWKS when ``[jwt]`` names one (for HTTP bearer
    tokens and PS3.7 type 5 alike), else the static key an AE with ``auth = "jwt"`` needs."""
    return jwks_verifier(settings) or static_key_verifier(settings)


@dataclass(frozen=True, slots=True)
class WorkerParts:
    """What a worker process (``[server] workers`` > 1) takes from its supervisor instead of
    opening it itself: the audit log, lockout counts and association slots (through the hub,
    `archive.hub`), the DIMSE connections it accepted (`handoff`, on the listeners of
    `dimse_addresses` at `dimse_ports`) and the DICOMweb listening socket, which every worker
    accepts on. Crash recovery and the running marker are the supervisor's."""

    worker: int
    audit: AuditSink
    lockout: LockoutCounter
    slots: SlotCounter
    handoff: WorkerHandoff
    dimse_ports: Sequence[int]
    web_socket: socket.socket | None
    closers: Sequence[object] = ()


def start_archive(
    settings: Settings,
    front_ends: Sequence[FrontEndFactory] = (),
    *,
    worker: WorkerParts | None = None,
) -> RunningArchive:
    """Validate, open storage and audit, and start the DIMSE listeners, DICOMweb when
    [dicomweb] enabled, then each of `front_ends` on the same loop and pools. Raises
    ConfigError. `worker`: run as one worker process of a supervisor (`archive.workers`)."""
    validate_listen(settings)
    require_files(settings)
    keep_values_out_of_logs()  # pydicom warnings, SQLAlchemy rows: no values logged
    destinations = move_destinations(settings)
    if worker is None:
        audit, closers = open_audit(settings)
    else:
        audit, closers = worker.audit, list(worker.closers)
    try:
        index, blobs = open_storage(settings)
    except BaseException:  # e.g. an index that the key does not open: close the audit log
        close_all(closers)
        raise
    # A marker present at start means the last run did not stop cleanly: only then is the
    # index-against-blobs scan worth its cost (it reads every row and lists every blob).
    running_marker: Path | None = settings.storage.data_dir / MARKER
    try:
        staging_folder = settings.storage.data_dir / STAGING_FOLDER
        if worker is None and running_marker is not None:
            if running_marker.exists():
                recover(index, blobs, max_in_flight=settings.server.max_associations * 2)
            write_marker(running_marker)
        else:  # the supervisor recovered and marks the archive running; a folder per worker
            running_marker = None
            staging_folder = staging_folder / f"worker-{worker.worker if worker else 0}"
        # Large received objects are staged here, encrypted; leftovers are swept now.
        staging = StagingArea(staging_folder)
    except BaseException:
        index.close()
        close_all(closers)
        raise
    gate = Gate(
        settings,
        audit=audit,
        jwt_verifier=jwt_verifier,
        api_tokens=ApiTokens.from_settings,
        lockout=None if worker is None else worker.lockout,
    )
    prefetch = getattr(gate.jwt_verifier, "prefetch", None)
    if callable(prefetch):  # the issuer's keys now, so that the first request does not wait
        why = prefetch()
        if why is not None:
            log.warning("[jwt] the issuer's keys could not be fetched yet: %s", why)
    server = settings.server
    service = ArchiveService(
        index,
        blobs,
        audit,
        gate.authorize,
        ServiceLimits(
            max_query_results=server.find_result_cap,
            max_decompressed_bytes=server.max_decompressed_bytes,
        ),
        staging=staging,
        patients=audit_patient_key(settings),
    )
    running = RunningArchive(
        settings,
        service,
        index,
        blobs,
        audit,
        gate,
        Runtime(workers=server.max_associations + 4),
        _closers=closers,
        _marker=running_marker,
        _destinations=destinations,
        _announce=worker is None,
    )
    try:
        if worker is None:
            running.start_front_end(dimse_front_end(running))
        else:
            running.start_front_end(
                dimse_front_end(
                    running, handoff=worker.handoff, ports=worker.dimse_ports, slots=worker.slots
                )
            )
        if settings.dicomweb.enabled:
            running.start_front_end(
                web_front_end(running, sock=None if worker is None else worker.web_socket)
            )
        for factory in front_ends:
            running.start_front_end(factory(running))
        if worker is not None:
            return running  # the supervisor announces the start, once
        audit.emit(  # AuditLogError: an archive that cannot audit does not start
            AuditEvent(
                EventType.APPLICATION_START,
                EventAction.EXECUTE,
                EventOutcome.SUCCESS,
                (Participant(ae_title=server.ae_title, requestor=False),),
                detail={"endpoints": ", ".join(str(e) for e in running.endpoints)},
            )
        )
    except BaseException:
        running.stop()
        raise
    return running


def web_front_end(running: RunningArchive, sock: socket.socket | None = None) -> WebFrontEnd:
    """The DICOMweb front end of `running` ([dicomweb]): HTTPS on [server] host.

    Imported here, not at the top: Starlette, uvicorn and python-multipart add about 20 MiB
    to an archive that does not serve DICOMweb."""
    from pacsguard.archive.web import WebFrontEnd

    return WebFrontEnd(
        running.service,
        running.gate,
        running.audit,
        lambda: running.settings,  # the settings in force: they change on reload
        running.runtime,
        sock=sock,
    )


def dimse_addresses(settings: Settings) -> list[tuple[str, int, bool]]:
    """Where DIMSE listens, (host, port, tls): TLS on `[server] dimse_port` when TLS is on,
    and plaintext where the settings ask for it."""
    server = settings.server
    addresses: list[tuple[str, int, bool]] = []
    if settings.tls.enabled:
        addresses.append((server.host, server.dimse_port, True))
    if server.plaintext_port is not None or not settings.tls.enabled:
        plain_host = server.plaintext_host if settings.tls.enabled else server.host
        plain_port = (
            server.plaintext_port if server.plaintext_port is not None else server.dimse_port
        )
        addresses.append((plain_host, plain_port, False))
    return addresses


def dimse_front_end(
    running: RunningArchive,
    *,
    handoff: WorkerHandoff | None = None,
    ports: Sequence[int] = (),
    slots: SlotCounter | None = None,
) -> AsyncDimseFrontEnd:
    """The DIMSE front end of `running` on `dimse_addresses`; in a worker process, on the
    connections its supervisor accepted (`handoff`, listening at `ports`) and with the
    supervisor's association `slots`."""
    settings = running.settings
    server = settings.server
    listeners = [
        Listener(
            host,
            ports[i] if i < len(ports) else port,
            server_context(settings) if tls else None,
        )
        for i, (host, port, tls) in enumerate(dimse_addresses(settings))
    ]
    return AsyncDimseFrontEnd(
        running.service,
        running.gate,
        running.audit,
        running.move_destination,
        FrontEndSettings(
            ae_title=server.ae_title,
            max_associations=server.max_associations,
            max_connections=server.max_associations * 4,
            max_pending_per_source=server.max_pending_per_source,
            max_associations_per_ae=settings.per_ae_cap,
            max_associations_per_user=settings.per_user_cap,
            pre_association_timeout=server.pre_association_timeout_s,
            max_pdu=server.max_pdu,
            network_timeout=server.network_timeout_s,
            acse_timeout=server.acse_timeout_s,
            dimse_timeout=server.dimse_timeout_s,
            handshake_timeout=server.handshake_timeout_s,
        ),
        running.runtime,
        listeners,
        slots,
        handoff,
    )
