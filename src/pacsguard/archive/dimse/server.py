"""The DIMSE listener: pynetdicom's threaded server with our gate and a safe TLS handshake.

Two changes to pynetdicom's server, both because its defaults are open or fragile:
- TLS: pynetdicom wraps the socket inside the accept loop, so one client that connects and says
  nothing blocks every other association. We accept the raw socket and run the handshake in the
  association's own thread, with a timeout.
- Association acceptance: pynetdicom accepts any calling AE and any request that lacks a user
  identity item. We replace the acceptor-side negotiation's first step with the Gate's decision
  (deny by default); pynetdicom's own negotiation of contexts and roles runs only after the gate
  has named the Principal, and only over the contexts that principal may use.

This relies on two pynetdicom internals (ACSE._negotiate_as_acceptor and the request handler's
_create_association) of the pinned version 3.0.x; `tests/` exercise both through real clients.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.security.principal import (
    PeerFacts,
    Principal,
    Rejection,
    UserIdentity,
)
from pacsguard.archive.security.tls import peer_cert_facts

log = logging.getLogger(__name__)


class AssociationGate(Protocol):
    """Decides who a peer is: a Principal, or the rejection to send."""

    def decide(self, facts: PeerFacts) -> Principal | Rejection: ...


#: Context abstract syntaxes grouped by the permission that allows them.
ContextFilter = Callable[[Principal, str], bool]


class GatedACSE(ACSE):
    """ACSE whose acceptor-side negotiation asks the gate first."""

    def __init__(self, assoc: Association, server: SecureAssociationServer) -> None:
        super().__init__(assoc)
        self._server = server

    def _facts(self, rq: A_ASSOCIATE) -> PeerFacts:
        info = self.requestor.address_info
        assert info is not None
        sock = self.assoc.dul.socket.socket if self.assoc.dul.socket else None
        cert = peer_cert_facts(sock) if isinstance(sock, ssl.SSLSocket) else None
        sha, subject = cert if cert is not None else (None, None)
        identity = None
        item = self.requestor.user_identity
        if item is not None:
            identity = UserIdentity(
                identity_type=int(item.user_identity_type or 0),
                primary=bytes(item.primary_field or b""),
                secondary=bytes(item.secondary_field or b""),
                positive_response_requested=bool(item.positive_response_requested),
            )
        return PeerFacts(
            address=str(info.address),
            port=int(info.port),
            calling_ae=str(rq.calling_ae_title).strip(),
            called_ae=str(rq.called_ae_title).strip(),
            tls=isinstance(sock, ssl.SSLSocket),
            client_cert_sha256=sha,
            client_cert_subject=subject,
            user_identity=identity,
        )

    def _negotiate_as_acceptor(self) -> None:
        rq = cast(A_ASSOCIATE, self.requestor.primitive)
        facts = self._facts(rq)
        decision = self._server.gate.decide(facts)
        participant = Participant(ae_title=facts.calling_ae, address=facts.address)
        if isinstance(decision, Rejection):
            self._server.audit.emit(
                AuditEvent(
                    EventType.ASSOCIATION,
                    EventAction.EXECUTE,
                    EventOutcome.MINOR_FAILURE,
                    (participant,),
                    detail={"result": "rejected", "reason": decision.why, "tls": facts.tls},
                )
            )
            self.send_reject(decision.result, decision.source, decision.reason)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self._server.principals[id(self.assoc)] = decision
        # Offer only the contexts this principal may use; the rest are refused per context.
        allowed = self._server.context_filter
        self.acceptor.supported_contexts = [
            cx
            for cx in self.acceptor.supported_contexts
            if allowed(decision, str(cx.abstract_syntax))
        ]
        self._server.audit.emit(
            AuditEvent(
                EventType.ASSOCIATION,
                EventAction.EXECUTE,
                EventOutcome.SUCCESS,
                (
                    Participant(
                        ae_title=decision.ae_title, address=facts.address, user=decision.username
                    ),
                ),
                detail={"result": "accepted", "method": decision.method.value, "tls": facts.tls},
            )
        )
        super()._negotiate_as_acceptor()


class GatedRequestHandler(RequestHandler):
    server: SecureAssociationServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.acse = GatedACSE(assoc, self.server)
        # The gate verified the identity already; answer the user identity item (positive
        # response only when asked for) instead of pynetdicom's accept-anything default.
        assoc.bind(evt.EVT_USER_ID, _identity_already_verified)
        return assoc


def _identity_already_verified(event: evt.Event, *args: Any) -> tuple[bool, bytes | None]:
    """The gate decided before pynetdicom asks; a positive response only when requested."""
    item = event.assoc.requestor.user_identity
    wants_response = item is not None and bool(item.positive_response_requested)
    return True, (b"" if wants_response else None)


class SecureAssociationServer(ThreadedAssociationServer):
    """Threaded server: TLS handshake off the accept loop, connection cap, gate, audit."""

    gate: AssociationGate
    audit: AuditSink
    context_filter: ContextFilter
    principals: dict[int, Principal]

    def __init__(
        self,
        *args: Any,
        gate: AssociationGate,
        audit: AuditSink,
        context_filter: ContextFilter,
        tls_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        max_connections: int = 64,
        **kwargs: Any,
    ) -> None:
        self.gate = gate
        self.audit = audit
        self.context_filter = context_filter
        self.tls_context = tls_context
        self.handshake_timeout = handshake_timeout
        self.principals = {}
        self._slots = threading.BoundedSemaphore(max_connections)
        kwargs["request_handler"] = GatedRequestHandler
        super().__init__(*args, **kwargs)

    def principal_of(self, assoc: Association) -> Principal | None:
        return self.principals.get(id(assoc))

    def forget(self, assoc: Association) -> None:
        self.principals.pop(id(assoc), None)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Refuse outright past the connection cap: a flood of idle sockets cannot exhaust
        # threads. Associations (as opposed to connections) are capped by pynetdicom's
        # maximum_associations with A-ASSOCIATE-RJ 2/3/2.
        if not self._slots.acquire(blocking=False):
            self.audit.emit(
                AuditEvent(
                    EventType.ASSOCIATION,
                    EventAction.EXECUTE,
                    EventOutcome.MINOR_FAILURE,
                    (Participant(address=str(client_address[0])),),
                    detail={"result": "refused", "reason": "connection limit reached"},
                )
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            sock = cast(socket.socket, request)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls_context is not None:
                wrapped = self._handshake(sock, client_address)
                if wrapped is None:
                    return
                request = wrapped
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _handshake(self, sock: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        assert self.tls_context is not None
        sock.settimeout(self.handshake_timeout)
        try:
            wrapped = self.tls_context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            reason = (
                "handshake timed out" if isinstance(exc, TimeoutError) else "TLS handshake failed"
            )
            self.audit.emit(
                AuditEvent(
                    EventType.AUTHENTICATION,
                    EventAction.EXECUTE,
                    EventOutcome.MINOR_FAILURE,
                    (Participant(address=str(client_address[0])),),
                    detail={"result": "tls-failure", "reason": reason},
                )
            )
            with contextlib.suppress(OSError):
                sock.close()
            return None
        wrapped.settimeout(self.ae.network_timeout)
        return wrapped
