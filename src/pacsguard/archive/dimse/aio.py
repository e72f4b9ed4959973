"""The DIMSE front end: one asyncio event loop serving every listener and association.

Why not pynetdicom's server: its threaded reactor polls with fixed 1 ms sleeps and hands every
PDU between threads (a bare pynetdicom storage SCP caps at about 166 instances/s here); it wraps
TLS in the accept loop, so one silent client blocks every other; and it accepts any calling AE
and any request without a user identity item unless its internals are overridden. Here one
event loop, in one background thread owned by the front end, serves every listener;
pynetdicom's PDU and DIMSE message classes remain the codec (pacsguard.dicom.ul / .dimse /
.stream). Archive calls (gate, service, audit) block, so they run on a bounded thread pool and
never on the loop.

Rules: TLS handshake after the connection cap, non-blocking, with a timeout, failures audited;
connection cap (refused and audited); association cap (A-ASSOCIATE-RJ 2/3/2); the gate's
decision before any context is negotiated; contexts per `contexts.context_allowed`; audit of
every decision, and an association accepted only once its audit line is durable (else
A-ASSOCIATE-RJ 2/3/1, transient: the audit log cannot be written); statuses per `identifiers`.
A peer that breaks the protocol gets an A-ABORT and its connection closes; the server keeps
serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Protocol

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.dimse.aio_negotiation import (
    ASSOCIATION_LIMIT,
    accept,
    decode_request,
    encode_reject,
    peer_facts,
)
from pacsguard.archive.dimse.aio_session import (
    AssociationSession,
    Channel,
    Environment,
    abort_and_close,
)
from pacsguard.archive.dimse.contexts import FrontEndSettings
from pacsguard.archive.dimse.identifiers import DestinationLookup
from pacsguard.archive.security.principal import PeerFacts, Principal, Rejection
from pacsguard.archive.service import ArchiveService
from pacsguard.dicom.client import close_writer, set_nodelay
from pacsguard.dicom.ul import ASSOCIATE_RQ, MAX_ASSOCIATION_PDU, encode_abort, read_pdu
from pacsguard.errors import AuditLogError, MalformedPdu, PeerClosed, ProtocolError


class AssociationGate(Protocol):
    """Decides who a peer is: a Principal, or the rejection to send (deny by default)."""

    def decide(self, facts: PeerFacts) -> Principal | Rejection: ...


log = logging.getLogger(__name__)

#: A-ABORT reasons from the service provider (PS3.8 Table 9-26).
_ABORT_UNEXPECTED_PDU: Final = 2
_ABORT_INVALID_PARAMETER: Final = 6
#: A-ASSOCIATE-RJ rejected-transient, service-provider (presentation), temporary-congestion
#: (PS3.8 Table 9-21): the audit log cannot be written, so nothing audited can happen now.
AUDIT_UNAVAILABLE: Final = (2, 3, 1)
_STOP_TIMEOUT: Final = 15.0


class AsyncDimseFrontEnd:
    """Owns the event loop thread and its listeners; listen() binds, stop() shuts all down."""

    def __init__(
        self,
        service: ArchiveService,
        gate: AssociationGate,
        audit: AuditSink,
        destinations: DestinationLookup,
        settings: FrontEndSettings,
    ) -> None:
        self._gate = gate
        self._audit = audit
        self._settings = settings
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_associations + 4, thread_name_prefix="dimse-aio"
        )
        self._env = Environment(service, destinations, settings, self._executor)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0
        self._associations = 0
        #: The principal of each established association, forgotten when it ends.
        self.principals: dict[int, Principal] = {}

    # -- lifecycle (caller's thread) ------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="dimse-aio-loop", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def listen(self, host: str, port: int, *, tls: ssl.SSLContext | None) -> tuple[str, int]:
        """Bind one listener (TLS when a context is given) now; serve it on the loop thread."""
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._start_server(host, port, tls), loop)
        server = future.result(timeout=_STOP_TIMEOUT)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        """Close every listener, abort open associations, stop the loop and the thread pool."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=_STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_STOP_TIMEOUT)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
        self._servers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- on the loop ------------------------------------------------------------------------------
    async def _start_server(
        self, host: str, port: int, tls: ssl.SSLContext | None
    ) -> asyncio.Server:
        return await asyncio.start_server(
            functools.partial(self._serve_connection, tls), host, port, reuse_address=True
        )

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _emit(self, event: AuditEvent) -> None:
        """Audit sinks write files (and fsync): off the loop. AuditLogError when the line
        cannot be made durable."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._audit.emit, event)

    async def _emit_refusal(self, event: AuditEvent) -> None:
        """Audit a refusal: it stands even when the log cannot take it (the log says so)."""
        with contextlib.suppress(AuditLogError):
            await self._emit(event)

    async def _serve_connection(
        self, tls: ssl.SSLContext | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("", 0)
        address, port = str(peer[0]), int(peer[1])
        if self._connections >= self._settings.max_connections:
            # Past the connection cap: refused outright, so idle sockets cannot exhaust us.
            writer.transport.abort()
            await self._emit_refusal(_refused(address, "connection limit reached"))
            return
        self._connections += 1
        self._tasks.add(task)
        try:
            set_nodelay(writer)
            if tls is not None and not await self._handshake(writer, tls, address):
                return
            await self._associate(reader, writer, address, port)
        except PeerClosed:
            pass
        except (ProtocolError, TimeoutError, OSError) as exc:
            log.info("association from %s aborted: %s", address, exc.__class__.__name__)
            abort_and_close(writer)
        except asyncio.CancelledError:
            abort_and_close(writer)
            raise
        except Exception:
            log.exception("DIMSE connection handler failed")
            abort_and_close(writer)
        finally:
            self._connections -= 1
            self._tasks.discard(task)
            await close_writer(writer)

    async def _handshake(
        self, writer: asyncio.StreamWriter, tls: ssl.SSLContext, address: str
    ) -> bool:
        """TLS handshake on the loop, bounded by the handshake timeout; failures are audited."""
        timeout = self._settings.handshake_timeout
        try:
            async with asyncio.timeout(timeout + 1.0):
                await writer.start_tls(tls, ssl_handshake_timeout=timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError) or "taking longer" in str(exc)
            reason = "handshake timed out" if timed_out else "TLS handshake failed"
            writer.transport.abort()
            await self._emit_refusal(
                AuditEvent(
                    EventType.AUTHENTICATION,
                    EventAction.EXECUTE,
                    EventOutcome.MINOR_FAILURE,
                    (Participant(address=address),),
                    detail={"result": "tls-failure", "reason": reason},
                )
            )
            return False
        return True

    async def _associate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, port: int
    ) -> None:
        settings = self._settings
        async with asyncio.timeout(settings.acse_timeout):
            pdu = await read_pdu(reader, MAX_ASSOCIATION_PDU)
        if pdu.pdu_type != ASSOCIATE_RQ:
            writer.write(encode_abort(source=2, reason=_ABORT_UNEXPECTED_PDU))
            raise PeerClosed(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu.pdu_type:02x}")
        try:
            rq = decode_request(pdu.data)
        except MalformedPdu:
            writer.write(encode_abort(source=2, reason=_ABORT_INVALID_PARAMETER))
            raise PeerClosed("undecodable A-ASSOCIATE-RQ") from None
        tls = writer.get_extra_info("ssl_object")
        facts = peer_facts(rq, address, port, tls if isinstance(tls, ssl.SSLObject) else None)
        participant = Participant(ae_title=facts.calling_ae, address=facts.address)
        if self._associations >= settings.max_associations:
            await self._send(writer, encode_reject(*ASSOCIATION_LIMIT))
            await self._emit_refusal(_rejected(participant, "association limit reached", facts.tls))
            return
        loop = asyncio.get_running_loop()
        try:
            decision = await loop.run_in_executor(self._executor, self._gate.decide, facts)
        except AuditLogError:  # the gate could not audit a lockout: refuse, transiently
            await self._send(writer, encode_reject(*AUDIT_UNAVAILABLE))
            return
        if isinstance(decision, Rejection):
            await self._emit_refusal(_rejected(participant, decision.why, facts.tls))
            await self._send(
                writer, encode_reject(decision.result, decision.source, decision.reason)
            )
            return
        accepted = accept(rq, decision, settings.max_pdu)
        try:
            await self._emit(
                AuditEvent(
                    EventType.ASSOCIATION,
                    EventAction.EXECUTE,
                    EventOutcome.SUCCESS,
                    (
                        Participant(
                            ae_title=decision.ae_title,
                            address=facts.address,
                            user=decision.username,
                        ),
                    ),
                    detail={
                        "result": "accepted",
                        "method": decision.method.value,
                        "tls": facts.tls,
                    },
                )
            )
        except AuditLogError:  # not accepted without its audit line
            await self._send(writer, encode_reject(*AUDIT_UNAVAILABLE))
            return
        channel = Channel(writer, accepted.peer_max_pdu, settings.network_timeout)
        await channel.send(accepted.pdu)
        key = id(channel)
        self._associations += 1
        self.principals[key] = decision
        try:
            session = AssociationSession(self._env, reader, channel, accepted.contexts, decision)
            await session.run()
        finally:
            self._associations -= 1
            self.principals.pop(key, None)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self._settings.network_timeout):
            await writer.drain()


def _refused(address: str, reason: str) -> AuditEvent:
    return AuditEvent(
        EventType.ASSOCIATION,
        EventAction.EXECUTE,
        EventOutcome.MINOR_FAILURE,
        (Participant(address=address),),
        detail={"result": "refused", "reason": reason},
    )


def _rejected(participant: Participant, reason: str, tls: bool) -> AuditEvent:
    return AuditEvent(
        EventType.ASSOCIATION,
        EventAction.EXECUTE,
        EventOutcome.MINOR_FAILURE,
        (participant,),
        detail={"result": "rejected", "reason": reason, "tls": tls},
    )
