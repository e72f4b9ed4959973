"""The DIMSE front end: one pynetdicom AE, one or more secure listeners, our handlers.

Listeners: the TLS port (2762 by default) and, only on loopback, an optional plaintext port for
peers that cannot do TLS (dcmtk's movescu/getscu in Debian's build). Both share the gate, the
handlers and the archive service.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.presentation import AllStoragePresentationContexts

from pacsguard.archive.audit.events import AuditSink
from pacsguard.archive.dimse.handlers import DestinationLookup, Handlers
from pacsguard.archive.dimse.server import AssociationGate, SecureAssociationServer
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import ArchiveService
from pacsguard.dicom import uids

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

_FIND = {str(uids.PATIENT_ROOT_FIND), str(uids.STUDY_ROOT_FIND)}
_MOVE = {str(uids.PATIENT_ROOT_MOVE), str(uids.STUDY_ROOT_MOVE)}
_GET = {str(uids.PATIENT_ROOT_GET), str(uids.STUDY_ROOT_GET)}
_STORAGE = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


def context_allowed(principal: Principal, abstract_syntax: str) -> bool:
    """Whether to offer a presentation context to this principal (deny by default)."""
    if abstract_syntax == uids.VERIFICATION:
        return principal.may(Action.ECHO)
    if abstract_syntax in _FIND:
        return principal.may(Action.FIND)
    if abstract_syntax in _MOVE:
        return principal.may(Action.MOVE)
    if abstract_syntax in _GET:
        return principal.may(Action.GET)
    if abstract_syntax in _STORAGE:
        # C-GET delivers over the same association with storage contexts in the SCP role.
        return principal.may(Action.STORE) or principal.may(Action.GET)
    return False


def quiet_pynetdicom() -> None:
    """pynetdicom's standard handlers log DIMSE identifiers (patient attributes) at debug and
    info level: turn them off, and keep its logger at warnings."""
    _config.LOG_HANDLER_LEVEL = "none"
    # ...and it formats every request/response identifier for the log even when the log level
    # drops it: patient data formatted for nothing, and 6% of C-FIND time.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # Receive C-STORE data sets into temporary files, not memory: a 2 GB study must not need
    # 2 GB of RAM.
    _config.STORE_RECV_CHUNKED_DATASET = True
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class FrontEndSettings:
    ae_title: str
    max_associations: int = 32
    max_connections: int = 64
    max_pdu: int = 262144
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    handshake_timeout: float = 10.0


class DimseFrontEnd:
    """Owns the AE and its listeners; start() binds, stop() shuts every listener down."""

    def __init__(
        self,
        service: ArchiveService,
        gate: AssociationGate,
        audit: AuditSink,
        destinations: DestinationLookup,
        settings: FrontEndSettings,
    ) -> None:
        quiet_pynetdicom()
        self._gate = gate
        self._audit = audit
        self._settings = settings
        self._handlers = Handlers(service, destinations)
        ae = AE(ae_title=settings.ae_title)
        ae.implementation_version_name = uids.IMPLEMENTATION_VERSION_NAME
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = settings.max_pdu
        ae.network_timeout = settings.network_timeout
        ae.acse_timeout = settings.acse_timeout
        ae.dimse_timeout = settings.dimse_timeout
        ae.require_called_aet = False  # the gate checks it and audits the rejection
        ae.require_calling_aet = []
        ae.add_supported_context(uids.VERIFICATION, TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(
                str(cx.abstract_syntax), TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        for abstract in sorted(_FIND | _MOVE | _GET):
            ae.add_supported_context(abstract, TRANSFER_SYNTAXES[:4])
        # Sub-associations for C-MOVE use these requested contexts only as a fallback.
        self._ae = ae
        self._servers: list[tuple[SecureAssociationServer, threading.Thread]] = []

    def listen(self, host: str, port: int, *, tls: ssl.SSLContext | None) -> tuple[str, int]:
        """Bind one listener (TLS when a context is given) and serve it in a thread."""
        s = self._settings
        server = self._ae.make_server(
            (host, port),
            ae_title=s.ae_title,
            evt_handlers=self._handlers.events(),
            server_class=SecureAssociationServer,
            gate=self._gate,
            audit=self._audit,
            context_filter=context_allowed,
            tls_context=tls,
            handshake_timeout=s.handshake_timeout,
            max_connections=s.max_connections,
        )
        assert isinstance(server, SecureAssociationServer)
        # Registered with the AE as start_server would, so that shutdown() can find it.
        self._ae._servers.append(server)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        thread.name = f"dimse-{'tls' if tls else 'plain'}-{port}"
        thread.start()
        self._servers.append((server, thread))
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        for server, thread in self._servers:
            server.shutdown()  # stops serve_forever, closes the socket, leaves the AE's list
            thread.join(timeout=10)
        self._servers.clear()
        self._ae.shutdown()
