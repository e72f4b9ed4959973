"""One accepted association of the asyncio front end: read PDUs, serve DIMSE, release or abort.

Statuses are those in `identifiers` (PS3.4, PS3.7 Annex C). Blocking archive calls run
on the front end's bounded thread pool, never on the event loop. C-FIND, C-GET and C-MOVE run as
an operation task while this loop keeps reading, so that C-CANCEL and the C-STORE-RSPs of C-GET
sub-operations are seen as they arrive; a second request waits for the running one (no
asynchronous operations window is negotiated, PS3.7 D.3.3.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
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
    query_from_identifier,
    response_identifier,
    root_of,
)
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import ArchiveService, Denied
from pacsguard.dicom import uids
from pacsguard.dicom.command import CommandField
from pacsguard.dicom.dimse import (
    DimseMessage,
    DimsePrimitive,
    encode_dataset,
    encode_message,
)
from pacsguard.dicom.ul import (
    ABORT,
    P_DATA_TF,
    RELEASE_RP_BYTES,
    RELEASE_RQ,
    encode_abort,
    read_pdu,
)
from pacsguard.errors import MalformedPdu

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest identifier (C-FIND/C-GET/C-MOVE) we assemble from a peer.
MAX_IDENTIFIER_BYTES: Final = 1024 * 1024
#: Smallest / largest PDU we fragment to, whatever a peer announces.
_MIN_SEND_PDU: Final = 1024
_MAX_SEND_PDU: Final = 4 * 1024 * 1024
#: C-FIND matches queued between the query thread and the loop.
_FIND_WINDOW: Final = 64
#: What a C-FIND / C-GET / C-MOVE needs permission for, and its response, for a refusal sent
#: before the identifier is even decoded.
_OPERATION_ACTIONS: Final[dict[int, Action]] = {
    CommandField.C_FIND_RQ: Action.FIND,
    CommandField.C_GET_RQ: Action.GET,
    CommandField.C_MOVE_RQ: Action.MOVE,
}
_OPERATION_RESPONSES: Final[dict[int, type[C_FIND | C_GET | C_MOVE]]] = {
    CommandField.C_FIND_RQ: C_FIND,
    CommandField.C_GET_RQ: C_GET,
    CommandField.C_MOVE_RQ: C_MOVE,
}


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


class Channel:
    """The writing side of an association: whole messages, drained with the network timeout."""

    def __init__(self, writer: asyncio.StreamWriter, peer_max_pdu: int, timeout: float) -> None:
        self.writer = writer
        self.max_pdu = min(max(peer_max_pdu or _MAX_SEND_PDU, _MIN_SEND_PDU), _MAX_SEND_PDU)
        self._timeout = timeout

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(self._timeout):
            await self.writer.drain()

    async def respond(self, primitive: DimsePrimitive, context_id: int) -> None:
        await self.send(encode_message(primitive, context_id, self.max_pdu, request=False))


@dataclass(slots=True)
class Operation:
    """A running C-FIND / C-GET / C-MOVE."""

    message_id: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    store_responses: asyncio.Queue[DimseMessage] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


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
        )

    async def run(self) -> None:
        """Serve until release or abort. ProtocolError/TimeoutError/OSError for a bad peer."""
        try:
            while True:
                async with asyncio.timeout(self.env.settings.network_timeout):
                    pdu = await read_pdu(self._reader, _read_bound(self.env.settings.max_pdu))
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
            if operation is not None and (
                message.command.get("MessageIDBeingRespondedTo") == operation.message_id
            ):
                operation.cancelled.set()
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
        operation = Operation(message_id)
        work = self._operate(incoming, message_id, operation)
        operation.task = asyncio.create_task(self._guard(work))
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
            refusal = _OPERATION_RESPONSES[message.field]()
            refusal.MessageIDBeingRespondedTo = message_id
            refusal.AffectedSOPClassUID = context.abstract_syntax
            refusal.Status = exc.status
            await self.channel.respond(refusal, context.context_id)
            return
        identifier = await self.env.call(decode_identifier, incoming.data, context.transfer_syntax)
        if message.field == CommandField.C_FIND_RQ:
            await self._find(context, message_id, identifier, operation)
        elif message.field == CommandField.C_GET_RQ:
            await serve_get(self, context, message_id, identifier, operation)
        else:
            destination = message.command.text("MoveDestination")
            await serve_move(self, context, message_id, identifier, destination, operation)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        """An operation that fails on the wire ends the association (A-ABORT, close)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info(
                "DIMSE operation ended the association: %s", exc.__class__.__name__, exc_info=True
            )
            abort_and_close(self.channel.writer)

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
        if received is None:
            status = UNABLE_TO_PROCESS  # a C-STORE-RQ without a data set
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
            except Denied as exc:
                status = exc.status
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = message_id
        rsp.AffectedSOPClassUID = incoming.context.abstract_syntax
        with contextlib.suppress(TypeError, ValueError):  # an invalid UID is not echoed
            rsp.AffectedSOPInstanceUID = sop_instance
        rsp.Status = status
        await self.channel.respond(rsp, incoming.context.context_id)

    async def _find(
        self,
        context: AcceptedContext,
        message_id: int,
        identifier: Dataset | None,
        operation: Operation,
    ) -> None:
        async for status, ds in self._find_results(context, identifier, operation):
            rsp = C_FIND()
            rsp.MessageIDBeingRespondedTo = message_id
            rsp.AffectedSOPClassUID = context.abstract_syntax
            rsp.Status = status
            if ds is not None:
                rsp.Identifier = encode_dataset(ds, context.transfer_syntax)
            await self.channel.respond(rsp, context.context_id)

    async def _find_results(
        self, context: AcceptedContext, identifier: Dataset | None, operation: Operation
    ) -> AsyncIterator[tuple[int, Dataset | None]]:
        """(status, identifier) pairs as handlers.on_find yields them, the final one last."""
        if identifier is None:
            yield UNABLE_TO_PROCESS, None
            return
        try:
            root = root_of(context.abstract_syntax)
            request = await self.env.call(query_from_identifier, identifier, root)
        except BadIdentifier:
            yield IDENTIFIER_MISMATCH, None
            return
        except Exception:
            yield UNABLE_TO_PROCESS, None
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        window = threading.Semaphore(_FIND_WINDOW)

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def produce() -> None:
            results = self.env.service.query(self.principal, request)
            try:
                for result in results:
                    while not window.acquire(timeout=0.5):
                        if operation.cancelled.is_set():
                            break
                    if operation.cancelled.is_set():
                        results.close()
                        put("status", CANCELLED)
                        return
                    put("match", result)
                put("status", 0x0000)
            except Denied as exc:
                put("status", exc.status)
            except ValueError:
                put("status", IDENTIFIER_MISMATCH)
            except Exception:
                log.exception("C-FIND failed")
                put("status", UNABLE_TO_PROCESS)

        producer = loop.run_in_executor(self.env.executor, produce)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "status":
                    yield value, None
                    return
                window.release()
                yield PENDING, response_identifier(request, value)
        finally:
            operation.cancelled.set()  # stops the query thread if we leave early
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(producer), timeout=5.0)


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


def _read_bound(max_pdu: int) -> int:
    """PDUs we accept: what we announce, with slack for peers that ignore it (as several do)."""
    return max(4 * max_pdu, 1024 * 1024)


def abort_and_close(writer: asyncio.StreamWriter) -> None:
    """A-P-ABORT (source 2, reason 0) and close; best effort."""
    with contextlib.suppress(Exception):
        writer.write(encode_abort(source=2, reason=0))
    with contextlib.suppress(Exception):
        writer.close()
