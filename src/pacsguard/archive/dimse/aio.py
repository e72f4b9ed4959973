"""The DIMSE front end: one asyncio event loop serving every listener and association.

Why not pynetdicom's server: its threaded reactor polls with fixed 1 ms sleeps and hands every
PDU between threads (a bare pynetdicom storage SCP caps at about 166 instances/s here); it wraps
TLS in the accept loop, so one silent client blocks every other; and it accepts any calling AE
and any request without a user identity item unless its internals are overridden. Here one
event loop serves every listener: the archive's `Runtime` loop, which the other front ends
share; the codecs are our own, checked against pynetdicom's as oracle (association PDUs:
pacsguard.dicom.acse_accept; messages: pacsguard.dicom.ul / .dimse / .stream). Archive calls
(gate, service, audit) block, so they run on the runtime's bounded thread pools and never on the
loop; the gate has a pool of its own, so that a burst of logins (Argon2id) cannot take the threads
that stores and audit lines need. The gate decides on the loop only what needs no blocking work
(`Gate.decide_now`: a remembered passcode, a certificate): under load the hop to a gate thread and
back cost 2 ms at p50 and 10 ms at p90 of association set-up.

Rules, in order: a connection not yet associated is "pending": at most `max_pending_per_source`
per source address and `max_connections` in all, past that it is closed at once, so idle or
half-open connections from one host cannot keep anyone else out; a pending connection has
`pre_association_timeout` to finish its TLS handshake (non-blocking) and send a complete
A-ASSOCIATE-RQ; the association cap is taken before the gate is asked (a slot is reserved, so
concurrent requests cannot overshoot it) and then the per-AE and per-user caps (A-ASSOCIATE-RJ
2/3/2); the gate's decision before any context is negotiated; contexts per
`contexts.context_allowed`; audit of every decision, with repeated refusals summed up per
window (`aio_refusals`) rather than one fsync'd line each; an association accepted only once
its audit line is durable (else A-ASSOCIATE-RJ 2/3/1, transient: the audit log cannot be
written; distinct from the uniform refusal a peer provokes); statuses per `identifiers`. A peer
that breaks the protocol gets an A-ABORT and its connection closes; the server keeps serving.
A refusal stands even when the audit log cannot take its line.

Every accepted socket has Nagle's algorithm off and re-arms TCP_QUICKACK after each read: a
client that leaves Nagle on (pynetdicom's default) holds its second small write until our ACK,
and Linux delays ACKs by up to 40 ms once a connection looks interactive; without quick ACKs
such a client paid ~40 ms per C-STORE.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, SupportsIndex, runtime_checkable

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
from pacsguard.archive.dimse.aio_refusals import WINDOW_S, RefusalTally
from pacsguard.archive.dimse.aio_session import (
    AssociationSession,
    Channel,
    Environment,
    abort_and_close,
)
from pacsguard.archive.dimse.contexts import FrontEndSettings
from pacsguard.archive.dimse.handoff import WorkerHandoff
from pacsguard.archive.dimse.identifiers import DestinationLookup
from pacsguard.archive.dimse.slots import AssociationSlots, SlotCounter
from pacsguard.archive.runtime import Endpoint, Runtime
from pacsguard.archive.security.attempt import AuthAttempt, dimse_attempt
from pacsguard.archive.security.gate import authentication_event, normalize_address
from pacsguard.archive.security.principal import PeerFacts, Principal, Rejection
from pacsguard.archive.service import ArchiveService
from pacsguard.dicom.acse_accept import AssociationRequest
from pacsguard.dicom.client import close_writer
from pacsguard.dicom.ul import ASSOCIATE_RQ, MAX_ASSOCIATION_PDU, encode_abort, read_pdu
from pacsguard.errors import AuditLogError, MalformedPdu, PeerClosed, ProtocolError


class AssociationGate(Protocol):
    """Decides who a peer is: a Principal, or the rejection to send (deny by default). The
    front end writes the audit line (`authentication_event`) itself: repeated refusals are
    summed up (`aio_refusals`), and an accepted peer may still meet an association cap."""

    def authenticate(
        self, attempt: AuthAttempt, *, audit: bool = True
    ) -> Principal | Rejection: ...

    def decide_now(self, attempt: AuthAttempt) -> Principal | None:
        """The Principal when it needs no blocking work, else None (then `authenticate`)."""
        ...


log = logging.getLogger(__name__)

#: A-ABORT reasons from the service provider (PS3.8 Table 9-26).
_ABORT_UNEXPECTED_PDU: Final = 2
_ABORT_INVALID_PARAMETER: Final = 6
#: A-ASSOCIATE-RJ rejected-transient, service-provider (presentation), temporary-congestion
#: (PS3.8 Table 9-21): the audit log cannot be written, so nothing audited can happen now.
AUDIT_UNAVAILABLE: Final = (2, 3, 1)
_TCP_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)


class _QuickAckReader(asyncio.StreamReader):
    """A StreamReader that re-arms TCP_QUICKACK on its socket after every read (Linux resets
    it whenever the connection turns interactive)."""

    sock: Any = None

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        super().feed_data(data)
        if self.sock is not None and _TCP_QUICKACK is not None:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self.sock = None


class _LowLatencyProtocol(asyncio.StreamReaderProtocol):
    """Turns Nagle off and quick ACKs on for every accepted socket (TLS runs on the same one).

    On a TLS listener (`tls`) the bytes that arrive before the handshake starts (a
    ClientHello sent with the connection) are kept aside (`take_early`) instead of going to
    the plaintext stream: uvloop, the archive's loop, reads from a socket as soon as it is
    accepted, and `start_tls` does not hand what the stream had read to TLS (uvloop#707,
    CPython gh-142352), so the handshake would stall. `start_handshake` hands them over."""

    def __init__(
        self, reader: _QuickAckReader, *args: Any, tls: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(reader, *args, **kwargs)
        self._quick_reader = reader
        self._early: bytearray | None = bytearray() if tls else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._quick_reader.sock = sock
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # TLS not started yet: handshake bytes
            if len(self._early) + len(data) > MAX_ASSOCIATION_PDU:
                self._early = None
                super().data_received(data)  # no handshake this large: let it fail there
                return
            self._early += data
            return
        super().data_received(data)

    def take_early(self) -> bytes:
        """What arrived before the handshake; from now on bytes go to the stream."""
        early, self._early = self._early, None
        return bytes(early or b"")


@runtime_checkable
class _Buffered(Protocol):
    """asyncio's BufferedProtocol, as uvloop's TLS protocol implements it (not a subclass)."""

    def get_buffer(self, sizehint: int, /) -> Any: ...

    def buffer_updated(self, nbytes: int, /) -> None: ...


async def start_handshake(
    writer: asyncio.StreamWriter, tls: ssl.SSLContext, timeout: float
) -> None:
    """`writer.start_tls(tls)` (server side), with the bytes that came before it.

    `start_tls` puts its TLS protocol on the transport at once and only then schedules the
    handshake (`connection_made`) and the reading (both loops do this, in this order): the
    early bytes go into the TLS protocol in between, ahead of anything read later."""
    raw = writer.transport
    plain = raw.get_protocol()
    upgrade = asyncio.ensure_future(writer.start_tls(tls, ssl_handshake_timeout=timeout))
    try:
        await asyncio.sleep(0)  # start_tls has run up to its handshake
        early = plain.take_early() if isinstance(plain, _LowLatencyProtocol) else b""
        secured = raw.get_protocol()
        if early and isinstance(secured, _Buffered) and secured is not plain:
            view = memoryview(early)
            while view:
                buffer = memoryview(secured.get_buffer(len(view)))
                count = min(len(buffer), len(view))
                buffer[:count] = view[:count]
                secured.buffer_updated(count)
                view = view[count:]
        await upgrade
    finally:
        if not upgrade.done():
            upgrade.cancel()
            with contextlib.suppress(BaseException):
                await upgrade


@dataclass(frozen=True, slots=True)
class Listener:
    """Where the DIMSE front end listens, and with which TLS context (None: plaintext).
    `sock`: a socket already bound to host:port (a supervisor's, shared by its workers)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    sock: socket.socket | None = None


class AsyncDimseFrontEnd:
    """The DIMSE `FrontEnd`: its listeners and associations on the runtime's loop and pools."""

    def __init__(
        self,
        service: ArchiveService,
        gate: AssociationGate,
        audit: AuditSink,
        destinations: DestinationLookup,
        settings: FrontEndSettings,
        runtime: Runtime,
        listeners: Sequence[Listener] = (),
        slots: SlotCounter | None = None,
        handoff: WorkerHandoff | None = None,
    ) -> None:
        """`slots` and `handoff`: in a worker process, the supervisor's association slots and
        the connections it accepted for us (then nothing is bound here; see `handoff`)."""
        self._handoff = handoff
        self._gate = gate
        self._audit = audit
        self._settings = settings
        self._listeners = tuple(listeners)
        self._executor = runtime.executor
        self._gate_executor = runtime.gate_executor
        self._env = Environment(service, destinations, settings, self._executor)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections not associated yet: in all, and per source address.
        self._pending = 0
        self._pending_by_source: Counter[str] = Counter()
        #: Association slots (reserved before the gate is asked), per AE, per user: ours, or
        #: the supervisor's when several worker processes share the caps.
        self._slots: SlotCounter = slots or AssociationSlots(
            settings.max_associations,
            settings.max_associations_per_ae,
            settings.max_associations_per_user,
        )
        self._refusals = RefusalTally(time.monotonic)
        self._flusher: asyncio.Task[None] | None = None
        #: The principal of each established association, forgotten when it ends.
        self.principals: dict[int, Principal] = {}

    # -- lifecycle (on the loop) -------------------------------------------------------------------
    async def start(self) -> list[Endpoint]:
        """Bind every listener now; where each listens (its port, when 0 was asked)."""
        endpoints = []
        if self._handoff is not None:  # the supervisor listens and passes connections
            self._start_flusher()
            self._handoff.start(asyncio.get_running_loop(), self._adopt)
            return [Endpoint(x.host, x.port, x.tls is not None) for x in self._listeners]
        for listener in self._listeners:
            server = await self._start_server(listener)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            endpoints.append(Endpoint(str(bound[0]), int(bound[1]), listener.tls is not None))
        return endpoints

    async def stop(self) -> None:
        """Close every listener and abort open associations (their audit lines written)."""
        await self._shutdown()
        self._servers.clear()

    # -- on the loop ------------------------------------------------------------------------------
    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_refusals())

    def _protocol_factory(
        self, tls: ssl.SSLContext | None, ended: Callable[[], None] | None = None
    ) -> Callable[[], asyncio.Protocol]:
        loop = asyncio.get_running_loop()

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._serve_connection(tls, reader, writer)
            finally:
                if ended is not None:
                    ended()

        def protocol() -> asyncio.Protocol:
            return _LowLatencyProtocol(
                _QuickAckReader(loop=loop), connected, loop=loop, tls=tls is not None
            )

        return protocol

    async def _adopt(self, index: int, connection: socket.socket) -> None:
        """Serve a connection the supervisor accepted on listener `index`."""
        handoff = self._handoff
        assert handoff is not None
        if index >= len(self._listeners):
            connection.close()
            handoff.ended()
            return
        factory = self._protocol_factory(self._listeners[index].tls, handoff.ended)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(factory, connection)
        except OSError:
            connection.close()
            handoff.ended()

    async def _start_server(self, listener: Listener) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._start_flusher()
        protocol = self._protocol_factory(listener.tls)
        if listener.sock is not None:
            return await loop.create_server(protocol, sock=listener.sock, backlog=256)
        return await loop.create_server(
            protocol, listener.host, listener.port, reuse_address=True, backlog=256
        )

    async def _shutdown(self) -> None:
        if self._handoff is not None:
            self._handoff.stop()
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        for line in self._refusals.due(everything=True):
            await self._emit_refusal(line)

    async def _emit(self, event: AuditEvent) -> None:
        """Audit sinks write files (and fsync): off the loop. AuditLogError when the line
        cannot be made durable."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._audit.emit, event)

    async def _emit_refusal(self, event: AuditEvent) -> None:
        """Audit a refusal: it stands even when the log cannot take it (the log says so)."""
        with contextlib.suppress(AuditLogError):
            await self._emit(event)

    async def _emit_repeated(self, event: AuditEvent) -> None:
        """A refusal that a peer may provoke in a loop: summed up per window (aio_refusals)."""
        first = self._refusals.note(event)
        if first is not None:
            await self._emit_refusal(first)

    async def _flush_refusals(self) -> None:
        while True:
            await asyncio.sleep(WINDOW_S / 3)
            for line in self._refusals.due():
                with contextlib.suppress(Exception):
                    await self._emit(line)

    async def _serve_connection(
        self, tls: ssl.SSLContext | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("", 0)
        address, port = normalize_address(str(peer[0])), int(peer[1])
        settings = self._settings
        if self._pending >= settings.max_connections:
            # Refused outright, so idle sockets cannot exhaust us.
            writer.transport.abort()
            await self._emit_repeated(_refused(address, "connection limit reached"))
            return
        if self._pending_by_source[address] >= settings.max_pending_per_source:
            writer.transport.abort()
            await self._emit_repeated(_refused(address, "too many pending connections"))
            return
        self._pending += 1
        self._pending_by_source[address] += 1
        self._tasks.add(task)
        pending = _PendingSlot(self, address)
        try:
            rq = await self._receive_request(reader, writer, tls, address)
            if rq is not None:
                await self._associate(reader, writer, rq, address, port, pending)
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
            pending.release()
            self._tasks.discard(task)
            await close_writer(writer)

    async def _receive_request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: ssl.SSLContext | None,
        address: str,
    ) -> AssociationRequest | None:
        """TLS handshake and A-ASSOCIATE-RQ within the pre-association deadline; None when the
        peer did not make it (audited, connection aborted)."""
        settings = self._settings
        deadline = min(settings.pre_association_timeout, settings.acse_timeout)
        try:
            async with asyncio.timeout(deadline):
                if tls is not None and not await self._handshake(writer, tls, address):
                    return None
                pdu = await read_pdu(reader, MAX_ASSOCIATION_PDU)
        except TimeoutError:
            writer.transport.abort()
            await self._emit_repeated(_refused(address, "no association request in time"))
            return None
        if pdu.pdu_type != ASSOCIATE_RQ:
            writer.write(encode_abort(source=2, reason=_ABORT_UNEXPECTED_PDU))
            raise PeerClosed(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu.pdu_type:02x}")
        try:
            return decode_request(pdu.data)
        except MalformedPdu:
            writer.write(encode_abort(source=2, reason=_ABORT_INVALID_PARAMETER))
            raise PeerClosed("undecodable A-ASSOCIATE-RQ") from None

    async def _handshake(
        self, writer: asyncio.StreamWriter, tls: ssl.SSLContext, address: str
    ) -> bool:
        """TLS handshake on the loop, bounded by the handshake timeout; failures are audited."""
        timeout = min(self._settings.handshake_timeout, self._settings.pre_association_timeout)
        try:
            async with asyncio.timeout(timeout + 1.0):
                await start_handshake(writer, tls, timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError) or "taking longer" in str(exc)
            reason = "handshake timed out" if timed_out else "TLS handshake failed"
            writer.transport.abort()
            await self._emit_repeated(
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
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rq: AssociationRequest,
        address: str,
        port: int,
        pending: _PendingSlot,
    ) -> None:
        tls = writer.get_extra_info("ssl_object")
        facts = peer_facts(rq, address, port, tls if isinstance(tls, ssl.SSLObject) else None)
        participant = Participant(ae_title=facts.calling_ae[:16], address=facts.address)
        # The slot is taken before the first await on anything else: concurrent requests
        # cannot all pass the check and overshoot the cap while the gate thinks.
        if not await self._slots.take():
            await self._emit_repeated(_rejected(participant, "association limit reached", facts))
            await self._send(writer, encode_reject(*ASSOCIATION_LIMIT))
            return
        try:
            loop = asyncio.get_running_loop()
            try:
                attempt = dimse_attempt(facts)
                # Most peers prove themselves without blocking work (a remembered passcode, a
                # certificate): decided here, without a hop to a gate thread and back.
                decision: Principal | Rejection | None = self._gate.decide_now(attempt)
                if decision is None:
                    decision = await loop.run_in_executor(
                        self._gate_executor,
                        functools.partial(self._gate.authenticate, attempt, audit=False),
                    )
            except AuditLogError:  # the gate could not audit a lockout: refuse, transiently
                await self._send(writer, encode_reject(*AUDIT_UNAVAILABLE))
                return
            if isinstance(decision, Rejection):
                rejected = authentication_event(attempt, decision)
                if decision.repeated:
                    await self._emit_repeated(rejected)
                else:
                    await self._emit_refusal(rejected)
                await self._send(
                    writer, encode_reject(decision.result, decision.source, decision.reason)
                )
                return
            over = await self._slots.take_peer(decision.ae_title, decision.username)
            if over is not None:
                await self._emit_repeated(_rejected(participant, over, facts))
                await self._send(writer, encode_reject(*ASSOCIATION_LIMIT))
                return
            try:
                pending.release()
                await self._serve(reader, writer, rq, attempt, decision)
            finally:
                await self._slots.give_peer(decision.ae_title, decision.username)
        finally:
            await self._slots.give()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rq: AssociationRequest,
        attempt: AuthAttempt,
        decision: Principal,
    ) -> None:
        settings = self._settings
        accepted = accept(rq, decision, settings.max_pdu)
        try:
            await self._emit(authentication_event(attempt, decision))
        except AuditLogError:  # not accepted without its audit line
            await self._send(writer, encode_reject(*AUDIT_UNAVAILABLE))
            return
        channel = Channel(writer, accepted.peer_max_pdu, settings.network_timeout)
        await channel.send(accepted.pdu)
        key = id(channel)
        self.principals[key] = decision
        try:
            session = AssociationSession(self._env, reader, channel, accepted.contexts, decision)
            await session.run()
        finally:
            self.principals.pop(key, None)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self._settings.network_timeout):
            await writer.drain()


class _PendingSlot:
    """A connection's place among the pending ones, given back once (associated or gone)."""

    def __init__(self, frontend: AsyncDimseFrontEnd, address: str) -> None:
        self._frontend: AsyncDimseFrontEnd | None = frontend
        self._address = address

    def release(self) -> None:
        frontend, self._frontend = self._frontend, None
        if frontend is not None:
            frontend._pending -= 1
            _decrement(frontend._pending_by_source, self._address)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _refused(address: str, reason: str) -> AuditEvent:
    return AuditEvent(
        EventType.ASSOCIATION,
        EventAction.EXECUTE,
        EventOutcome.MINOR_FAILURE,
        (Participant(address=address),),
        detail={"result": "refused", "reason": reason},
    )


def _rejected(participant: Participant, reason: str, facts: PeerFacts) -> AuditEvent:
    return AuditEvent(
        EventType.ASSOCIATION,
        EventAction.EXECUTE,
        EventOutcome.MINOR_FAILURE,
        (participant,),
        detail={"result": "rejected", "reason": reason, "tls": facts.tls},
    )
