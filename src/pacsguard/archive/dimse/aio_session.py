"""One accepted association of the asyncio front end: read PDUs, serve DIMSE, release or abort.

Statuses are those in `identifiers` (PS3.4, PS3.7 Annex C). Blocking archive calls run
on the front end's bounded thread pool, never on the event loop. C-FIND, C-GET and C-MOVE run as
an operation task while this loop keeps reading, so that C-CANCEL and the C-STORE-RSPs of C-GET
sub-operations are seen as they arrive; a second request waits for the running one (no
asynchronous operations window is negotiated, PS3.7 D.3.3.3).

Every failure on our side gets a DICOM answer with an Error Comment, never a bare abort: a store
that the blob store or index cannot take (0xA700 / 0x0110), a query or retrieve the index cannot
answer, an operation the audit log cannot record (0xA700; retrieves 0xA702), an unexpected error
in an operation (0xC000). Only a peer that breaks the protocol, or a connection that fails
mid-message, ends the association. The network timeout is an idle timeout: it runs only while no
operation is in progress, so a C-MOVE to a slow destination or a long C-GET completes (each
sub-operation is bounded by the DIMSE timeout instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import Any, Final, TypeVar

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode

from pacsguard.archive.dimse.aio_negotiation import AcceptedContext
from pacsguard.archive.dimse.aio_receive import Incoming, MessageReceiver
from pacsguard.archive.dimse.contexts import FrontEndSettings
from pacsguard.archive.dimse.identifiers import (
    CANCELLED,
    IDENTIFIER_MISMATCH,
    PENDING,
    UNABLE_TO_PROCESS,
    BadIdentifier,
    DestinationLookup,
    declared_character_set,
    query_from_identifier,
    response_identifier,
    root_of,
)
from pacsguard.archive.model import QueryRequest
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    ArchiveService,
    Denied,
)
from pacsguard.dicom import uids
from pacsguard.dicom.command import CommandField
from pacsguard.dicom.dimse import (
    DimseMessage,
    DimsePrimitive,
    encode_dataset,
    encode_message,
)
from pacsguard.dicom.levels import QueryRoot
from pacsguard.dicom.ul import (
    ABORT,
    P_DATA_TF,
    RELEASE_RP_BYTES,
    RELEASE_RQ,
    RawPdu,
    encode_abort,
    read_pdu,
)
from pacsguard.errors import AuditLogError, MalformedPdu, ProtocolError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest identifier (C-FIND/C-GET/C-MOVE) we assemble from a peer.
MAX_IDENTIFIER_BYTES: Final = 1024 * 1024
#: Smallest / largest PDU we fragment to, whatever a peer announces.
_MIN_SEND_PDU: Final = 1024
_MAX_SEND_PDU: Final = 4 * 1024 * 1024
#: C-FIND matches queued between the query thread and the loop.
_FIND_WINDOW: Final = 64
#: What a C-FIND / C-GET / C-MOVE needs permission for, checked before the identifier is
#: even decoded.
_OPERATION_ACTIONS: Final[dict[int, Action]] = {
    CommandField.C_FIND_RQ: Action.FIND,
    CommandField.C_GET_RQ: Action.GET,
    CommandField.C_MOVE_RQ: Action.MOVE,
}
#: C-STORE statuses that are not failures: no Error Comment.
_STORE_OK: Final = frozenset({SUCCESS, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True, slots=True)
class Environment:
    """What every association shares: the archive, its settings and the thread pool."""

    service: ArchiveService
    destinations: DestinationLookup
    settings: FrontEndSettings
    executor: Executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking archive call on the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def _whole_pdu_buffered(reader: asyncio.StreamReader) -> bool:
    """True when a whole PDU (6-byte header and the length it gives) is already in the reader's
    buffer, so reading it cannot wait for the peer. CPython's StreamReader keeps its data in
    `_buffer`; without one this answers False and the read is timed as usual."""
    buffer = getattr(reader, "_buffer", None)
    if not isinstance(buffer, bytearray) or len(buffer) < 6:
        return False
    return len(buffer) >= 6 + int.from_bytes(buffer[2:6], "big")


class Channel:
    """The writing side of an association: whole messages, drained with the network timeout.

    `broken` is set once a send failed or a message was left half-sent: nothing more may follow
    on this association but an A-ABORT."""

    def __init__(self, writer: asyncio.StreamWriter, peer_max_pdu: int, timeout: float) -> None:
        self.writer = writer
        self.max_pdu = min(max(peer_max_pdu or _MAX_SEND_PDU, _MIN_SEND_PDU), _MAX_SEND_PDU)
        self._timeout = timeout
        self.broken = False

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() == 0:
                # All of it went to the socket: drain cannot wait (it only raises a lost
                # connection), so no timer is armed; one per response showed in the profile.
                await self.writer.drain()
                return
            async with asyncio.timeout(self._timeout):
                await self.writer.drain()
        except BaseException:
            self.broken = True
            raise

    async def respond(self, primitive: DimsePrimitive, context_id: int) -> None:
        await self.send(encode_message(primitive, context_id, self.max_pdu, request=False))


@dataclass(slots=True)
class Operation:
    """A running C-FIND / C-GET / C-MOVE; `answered` once its final response is sent."""

    message_id: int
    kind: int = CommandField.C_FIND_RQ
    context: AcceptedContext | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    store_responses: asyncio.Queue[DimseMessage] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    answered: bool = False


class AssociationSession:
    """The DIMSE phase of one association, for one principal."""

    def __init__(
        self,
        env: Environment,
        reader: asyncio.StreamReader,
        channel: Channel,
        contexts: dict[int, AcceptedContext],
        principal: Principal,
    ) -> None:
        self.env = env
        self.channel = channel
        self.contexts = contexts
        self.principal = principal
        self._reader = reader
        self._operation: Operation | None = None
        self._receiver = MessageReceiver(
            contexts,
            max_identifier_bytes=MAX_IDENTIFIER_BYTES,
            max_store_bytes=env.service.limits.max_object_bytes,
            staging=env.service.staging,
        )

    async def run(self) -> None:
        """Serve until release or abort. ProtocolError/TimeoutError/OSError for a bad peer."""
        try:
            while True:
                pdu = await self._next_pdu()
                if pdu.pdu_type == P_DATA_TF:
                    for incoming in self._receiver.feed(pdu):
                        await self._route(incoming)
                elif pdu.pdu_type == RELEASE_RQ:
                    await self._settle()
                    await self.channel.send(RELEASE_RP_BYTES)
                    return
                elif pdu.pdu_type == ABORT:
                    return
                else:
                    raise MalformedPdu(f"unexpected PDU type 0x{pdu.pdu_type:02x} in DIMSE")
        finally:
            self._receiver.close()
            await self._stop_operation()

    async def _next_pdu(self) -> RawPdu:
        """The next PDU. The network timeout is an idle timeout: while an operation runs (a
        C-MOVE to a slow destination, a long C-GET) the peer may stay silent for as long as it
        takes; the timeout starts when the operation ends."""
        bound = _read_bound(self.env.settings.max_pdu)
        operation = self._operation
        running = operation.task if operation is not None else None
        if running is None or running.done():
            if _whole_pdu_buffered(self._reader):  # no wait for the network: no timer
                return await read_pdu(self._reader, bound)
            async with asyncio.timeout(self.env.settings.network_timeout):
                return await read_pdu(self._reader, bound)
        read = asyncio.ensure_future(read_pdu(self._reader, bound))
        try:
            await asyncio.wait((read, running), return_when=asyncio.FIRST_COMPLETED)
            if not read.done():  # the operation ended first: idle from now on
                async with asyncio.timeout(self.env.settings.network_timeout):
                    await asyncio.wait((read,))
        finally:
            if not read.done():
                read.cancel()
        if read.cancelled():
            raise TimeoutError("no PDU within the network timeout")
        return read.result()

    async def _settle(self) -> None:
        """Wait for the running operation (a well-behaved peer waits for its final response)."""
        operation = self._operation
        if operation is not None and operation.task is not None:
            await asyncio.shield(operation.task)
        self._operation = None

    async def _stop_operation(self) -> None:
        operation, self._operation = self._operation, None
        if operation is None or operation.task is None:
            return
        operation.cancelled.set()
        operation.task.cancel()
        with contextlib.suppress(BaseException):
            await operation.task

    async def _route(self, incoming: Incoming) -> None:
        message = incoming.message
        kind = message.field
        if kind == CommandField.C_CANCEL_RQ:
            operation = self._operation
            target = message.command.get("MessageIDBeingRespondedTo")
            if operation is not None and target == operation.message_id:
                operation.cancelled.set()
                log.debug("C-CANCEL for message %s: stopping the operation", target)
            else:
                log.debug("C-CANCEL for message %s: no such operation running", target)
            return
        if kind == CommandField.C_STORE_RSP:
            if self._operation is None:
                raise MalformedPdu("C-STORE-RSP with no C-GET sub-operation outstanding")
            self._operation.store_responses.put_nowait(message)
            return
        message_id = message.command.integer("MessageID")
        if message_id is None:
            incoming.discard()
            raise MalformedPdu("DIMSE request without a Message ID")
        try:
            await self._settle()
            if kind == CommandField.C_ECHO_RQ:
                await self._echo(incoming.context, message_id)
            elif kind == CommandField.C_STORE_RQ:
                await self._store(incoming, message_id)
            elif kind in (CommandField.C_FIND_RQ, CommandField.C_GET_RQ, CommandField.C_MOVE_RQ):
                self._start(incoming, message_id)
            else:
                raise MalformedPdu(f"unsupported DIMSE request, command field 0x{kind:04x}")
        finally:
            incoming.discard()

    def _start(self, incoming: Incoming, message_id: int) -> None:
        operation = Operation(message_id, incoming.message.field, incoming.context)
        work = self._operate(incoming, message_id, operation)
        operation.task = asyncio.create_task(self._guard(work, operation))
        self._operation = operation

    async def _operate(self, incoming: Incoming, message_id: int, operation: Operation) -> None:
        """Permission first, then the identifier is decoded (off the loop: a 1 MiB identifier
        takes pydicom seconds), then the C-FIND / C-GET / C-MOVE runs."""
        from pacsguard.archive.dimse.aio_retrieve import serve_get, serve_move

        message, context = incoming.message, incoming.context
        try:
            action = _OPERATION_ACTIONS[message.field]
            await self.env.call(self.env.service.require, self.principal, action)
        except Denied as exc:
            refusal = _operation_response(operation.kind)
            refusal.MessageIDBeingRespondedTo = message_id
            refusal.AffectedSOPClassUID = context.abstract_syntax
            refusal.Status = exc.status
            set_error_comment(refusal, "not authorized")
            await self.channel.respond(refusal, context.context_id)
            operation.answered = True
            return
        identifier = await self.env.call(decode_identifier, incoming.data, context.transfer_syntax)
        if message.field == CommandField.C_FIND_RQ:
            await self._find(context, message_id, identifier, operation)
        elif message.field == CommandField.C_GET_RQ:
            await serve_get(self, context, message_id, identifier, operation)
        else:
            destination = message.command.text("MoveDestination")
            await serve_move(self, context, message_id, identifier, destination, operation)

    async def _guard(self, work: Coroutine[Any, Any, None], operation: Operation) -> None:
        """An operation that fails on the wire (the peer broke the protocol, the connection
        failed, a message was left half-sent) ends the association (A-ABORT, close); any other
        error is answered with 0xC000 "unable to process" and the association stays up."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, ProtocolError | OSError | TimeoutError) or self.channel.broken:
                log.info("DIMSE operation ended the association: %s", exc.__class__.__name__)
                abort_and_close(self.channel.writer)
                return
            log.error("DIMSE operation failed: %s", exc.__class__.__name__)
            if operation.answered:  # after its final response: the association is fine
                return
            try:
                await self._answer_failure(operation)
            except Exception:
                abort_and_close(self.channel.writer)

    async def _answer_failure(self, operation: Operation) -> None:
        """The final response of an operation that failed on our side."""
        context = operation.context
        assert context is not None
        rsp = _operation_response(operation.kind)
        rsp.MessageIDBeingRespondedTo = operation.message_id
        rsp.AffectedSOPClassUID = context.abstract_syntax
        rsp.Status = UNABLE_TO_PROCESS
        set_error_comment(rsp, "internal error; see the archive log")
        await self.channel.respond(rsp, context.context_id)
        operation.answered = True

    async def _echo(self, context: AcceptedContext, message_id: int) -> None:
        status = 0x0000
        try:
            await self.env.call(self.env.service.require, self.principal, Action.ECHO)
        except Denied as exc:
            status = exc.status
        rsp = C_ECHO()
        rsp.MessageIDBeingRespondedTo = message_id
        rsp.AffectedSOPClassUID = context.abstract_syntax
        rsp.Status = status
        await self.channel.respond(rsp, context.context_id)

    async def _store(self, incoming: Incoming, message_id: int) -> None:
        command = incoming.message.command
        sop_class = command.text("AffectedSOPClassUID") or None
        sop_instance = command.text("AffectedSOPInstanceUID") or None
        received = incoming.stored_object
        comment: str | None = None
        if received is None:
            status, comment = UNABLE_TO_PROCESS, "no data set"
        else:
            try:
                result = await self.env.call(
                    lambda: self.env.service.store_instance(
                        self.principal,
                        received,
                        affected_sop_class_uid=sop_class,
                        affected_sop_instance_uid=sop_instance,
                    )
                )
                status = result.status
                if status not in _STORE_OK:
                    comment = result.outcome
            except Denied as exc:
                status, comment = exc.status, "not authorized"
            except Exception as exc:  # the archive failed, not the peer: answer, keep serving
                log.error("C-STORE failed: %s", exc.__class__.__name__)
                status, comment = PROCESSING_FAILURE, "archive failure; not acknowledged, retry"
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = message_id
        rsp.AffectedSOPClassUID = incoming.context.abstract_syntax
        with contextlib.suppress(TypeError, ValueError):  # an invalid UID is not echoed
            rsp.AffectedSOPInstanceUID = sop_instance
        rsp.Status = status
        if comment:
            set_error_comment(rsp, comment)
        await self.channel.respond(rsp, incoming.context.context_id)

    async def _find(
        self,
        context: AcceptedContext,
        message_id: int,
        identifier: Dataset | None,
        operation: Operation,
    ) -> None:
        async for status, ds, comment in self._find_results(context, identifier, operation):
            rsp = C_FIND()
            rsp.MessageIDBeingRespondedTo = message_id
            rsp.AffectedSOPClassUID = context.abstract_syntax
            rsp.Status = status
            if ds is not None:
                rsp.Identifier = encode_dataset(ds, context.transfer_syntax)
            if comment:
                set_error_comment(rsp, comment)
            await self.channel.respond(rsp, context.context_id)
            operation.answered = status != PENDING

    async def _find_results(
        self, context: AcceptedContext, identifier: Dataset | None, operation: Operation
    ) -> AsyncIterator[tuple[int, Dataset | None, str | None]]:
        """(status, identifier, error comment) per response, the final one last. An answer
        cut by the result cap ends with 0xFE00 (matching terminated) and says so: PS3.4 has
        no C-FIND warning status, and 0x0000 would claim the answer complete."""
        if identifier is None:
            yield UNABLE_TO_PROCESS, None, "no identifier"
            return
        try:
            root = root_of(context.abstract_syntax)
            request, charset = await self.env.call(_read_query, identifier, root)
        except BadIdentifier as exc:
            yield IDENTIFIER_MISMATCH, None, str(exc)
            return
        except Exception:
            yield UNABLE_TO_PROCESS, None, "identifier not usable"
            return
        cap = self.env.service.limits.max_query_results
        request = replace(request, limit=cap)  # C-FIND has no limit of its own: the cap's
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        window = threading.Semaphore(_FIND_WINDOW)

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def produce() -> None:
            answer = self.env.service.query(self.principal, request)
            for match in answer:
                while not window.acquire(timeout=0.5):
                    if operation.cancelled.is_set():
                        break
                if operation.cancelled.is_set():
                    put("status", (CANCELLED, "cancelled by the requester"))
                    return
                put("match", match)
            if answer.more:
                put("status", (CANCELLED, f"more than {cap} matches: refine the query"))
            else:
                put("status", (SUCCESS, None))

        def produce_answers() -> None:
            try:
                produce()
            except Denied as exc:
                put("status", (exc.status, "not authorized"))
            except AuditLogError:  # nothing was released; the log said why, once
                put("status", (OUT_OF_RESOURCES, "audit log unavailable"))
            except ValueError as exc:
                put("status", (IDENTIFIER_MISMATCH, str(exc)))
            except Exception as exc:
                log.error("C-FIND failed: %s", exc.__class__.__name__)
                put("status", (OUT_OF_RESOURCES, "index unavailable"))

        producer = loop.run_in_executor(self.env.executor, produce_answers)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "status":
                    yield value[0], None, value[1]
                    return
                window.release()
                yield PENDING, response_identifier(request, value, charset), None
        finally:
            operation.cancelled.set()  # stops the query thread if we leave early
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(producer), timeout=5.0)


def _read_query(identifier: Dataset, root: QueryRoot) -> tuple[QueryRequest, tuple[str, ...]]:
    """The query and the character set an identifier declares (blocking: off the loop)."""
    return query_from_identifier(identifier, root), declared_character_set(identifier)


def _operation_response(kind: int) -> C_FIND | C_GET | C_MOVE:
    if kind == CommandField.C_GET_RQ:
        return C_GET()
    if kind == CommandField.C_MOVE_RQ:
        return C_MOVE()
    return C_FIND()


def decode_identifier(data: bytes | None, transfer_syntax: str) -> Dataset | None:
    """A received identifier, or None when absent or undecodable (as `decode_dataset`).

    Elements that no query or retrieve reads -- private ones, and tags the DICOM dictionary
    does not know (they have no keyword to match on) -- are dropped before pydicom converts
    values: a peer that pads an identifier with 40,000 of them cost pydicom 3.4 s of CPU (and
    the other peers the interpreter) for nothing. Blocking: run it off the event loop.
    """
    if not data:
        return None
    try:
        ds = decode(BytesIO(data), transfer_syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN, True)
        tags = list(ds.keys())
        for tag in [t for t in tags if t.is_private or not keyword_for_tag(t)]:
            del ds[tag]
        for _elem in ds:  # convert every value now, inside the guard
            pass
    except Exception:
        return None
    return ds


def set_error_comment(rsp: C_FIND | C_GET | C_MOVE | C_STORE, comment: str) -> None:
    """(0000,0902) Error Comment: LO, so at most 64 printable ASCII characters without a
    backslash (others become "?"); our own wording, never patient data."""
    text = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in comment[:64])
    rsp.ErrorComment = text  # type: ignore[assignment]


def _read_bound(max_pdu: int) -> int:
    """PDUs we accept: what we announce, with slack for peers that ignore it (as several do)."""
    return max(4 * max_pdu, 1024 * 1024)


def abort_and_close(writer: asyncio.StreamWriter) -> None:
    """A-P-ABORT (source 2, reason 0) and close; best effort."""
    with contextlib.suppress(Exception):
        writer.write(encode_abort(source=2, reason=0))
    with contextlib.suppress(Exception):
        writer.close()
