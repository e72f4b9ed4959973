"""One association with a well-behaved simulated host: negotiate, serve DIMSE, release.

Every read is bounded in size (`read_pdu`, `MessageAssembler`) and time (`Limits`); a peer that
breaks the protocol gets an A-ABORT and the connection closes. C-STORE is counted, never kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Final

from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ

from pacsguard.dicom.command import DATA_SET_PRESENT, CommandField, encode_command
from pacsguard.dicom.dimse import (
    MAX_MESSAGE_BYTES,
    DimseMessage,
    MessageAssembler,
    decode_dataset,
    encode_dataset,
    encode_message,
    pdata_pdus,
)
from pacsguard.dicom.levels import QueryRoot
from pacsguard.dicom.ul import (
    ABORT,
    ASSOCIATE_RQ,
    MAX_ASSOCIATION_PDU,
    P_DATA_TF,
    RELEASE_RP_BYTES,
    RELEASE_RQ,
    encode_abort,
    read_pdu,
)
from pacsguard.errors import MalformedPdu, PduTooLarge
from pacsguard.lab.acceptor import AcceptedContext, Rejected, negotiate
from pacsguard.lab.profiles import (
    PATIENT_ROOT_FIND,
    STORAGE,
    STUDY_ROOT_FIND,
    VERIFICATION,
    HostSpec,
)
from pacsguard.lab.query import (
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_UNABLE_TO_PROCESS,
    FindResult,
    HostData,
    find,
)
from pacsguard.lab.synth import generate_archive

#: Refused: SOP Class not supported (PS3.7 C.1.4), for a request on the wrong context.
STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
#: A-ABORT reasons from the service provider (PS3.8 Table 9-26).
ABORT_UNEXPECTED_PDU: Final = 2
ABORT_INVALID_PARAMETER: Final = 6
#: Smallest PDU we fragment to, whatever a peer announces: a tiny value would only burn CPU.
_MIN_SEND_PDU: Final = 1024
_DEFAULT_SEND_PDU: Final = 64 * 1024
_DRAIN_EVERY: Final = 32


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one misbehaving peer from costing the farm more than a socket."""

    #: Seconds to receive an A-ASSOCIATE-RQ after connecting.
    association_timeout: float = 10.0
    #: Seconds of silence tolerated between PDUs, and for a write to drain.
    idle_timeout: float = 30.0
    #: How long hostile hosts hold a connection open before closing it themselves.
    hostile_hold: float = 30.0
    #: Largest PDU accepted from a peer once associated (we announce less; some peers ignore it).
    max_pdu: int = 1024 * 1024
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: Connections open at once across the farm; more are closed on accept.
    max_connections: int = 8192


@dataclass(slots=True)
class FarmStats:
    """What the farm has seen, for the summary and for tests."""

    connections: int = 0
    refused_over_limit: int = 0
    associations_accepted: int = 0
    associations_rejected: int = 0
    releases: int = 0
    echoes: int = 0
    finds: int = 0
    find_responses: int = 0
    stores: int = 0
    #: Peers that broke the protocol, closed early or timed out: expected from scanners.
    peer_errors: int = 0
    #: Exceptions in the farm's own code: must stay 0.
    internal_errors: int = 0


@dataclass(slots=True)
class HostState:
    """A host's spec plus what it accumulates while serving; its rows are built on first query."""

    spec: HostSpec
    stored: int = 0
    #: Connections this host accepted (tests check that a resumed scan skips finished hosts).
    connections: int = 0
    _data: HostData | None = field(default=None, repr=False)

    def data(self) -> HostData:
        if self._data is None:
            if self.spec.patients > 0:
                archive = generate_archive(self.spec.seed, self.spec.patients)
                self._data = HostData.from_archive(archive)
            else:
                self._data = HostData.empty()
        return self._data


def pending_find_encoder(
    context: AcceptedContext, message_id: int, max_pdu: int
) -> Callable[[BytesIO], bytes]:
    """Encode pending C-FIND-RSPs that differ only in their identifier.

    Same bytes as `encode_message`, but the command set is built once per C-FIND instead of
    once per match: that halves the farm's cost per response.
    """
    command = pdata_pdus(
        encode_command(
            {
                "CommandField": CommandField.C_FIND_RSP,
                "AffectedSOPClassUID": context.abstract_syntax,
                "MessageIDBeingRespondedTo": message_id,
                "CommandDataSetType": DATA_SET_PRESENT,
                "Status": STATUS_PENDING,
            }
        ),
        context.context_id,
        max_pdu,
        command=True,
    )

    def encode(identifier: BytesIO) -> bytes:
        return command + pdata_pdus(
            identifier.getvalue(), context.context_id, max_pdu, command=False
        )

    return encode


class _Conversation:
    """The DIMSE phase of one accepted association."""

    def __init__(
        self,
        state: HostState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        contexts: dict[int, AcceptedContext],
        peer_max_pdu: int,
        limits: Limits,
        stats: FarmStats,
    ) -> None:
        self._state = state
        self._reader = reader
        self._writer = writer
        self._contexts = contexts
        self._limits = limits
        self._stats = stats
        send = peer_max_pdu or _DEFAULT_SEND_PDU
        self._send_max_pdu = max(_MIN_SEND_PDU, min(send, limits.max_pdu))

    async def run(self) -> None:
        assembler = MessageAssembler(self._limits.max_message_bytes)
        while True:
            async with asyncio.timeout(self._limits.idle_timeout):
                pdu = await read_pdu(self._reader, self._limits.max_pdu)
            if pdu.pdu_type == P_DATA_TF:
                message = assembler.feed(pdu)
                if message is not None and not await self._dispatch(message):
                    return
            elif pdu.pdu_type == RELEASE_RQ:
                self._stats.releases += 1
                await self._send(RELEASE_RP_BYTES)
                return
            elif pdu.pdu_type == ABORT:
                return
            else:
                raise MalformedPdu(f"unexpected PDU type 0x{pdu.pdu_type:02x} after association")

    async def _dispatch(self, message: DimseMessage) -> bool:
        """Serve one DIMSE request; False when the association has to end."""
        context = self._contexts.get(message.context_id)
        if context is None:
            raise MalformedPdu("P-DATA on a presentation context that was not accepted")
        message_id = message.command.integer("MessageID")
        if message.field == CommandField.C_CANCEL_RQ:
            return True  # every C-FIND has already been answered in full
        if message_id is None:
            raise MalformedPdu("DIMSE request without a Message ID")
        if message.field == CommandField.C_ECHO_RQ:
            await self._echo(context, message_id)
        elif message.field == CommandField.C_FIND_RQ:
            await self._find(context, message_id, message)
        elif message.field == CommandField.C_STORE_RQ:
            await self._store(context, message_id, message)
        else:
            raise MalformedPdu(f"unsupported DIMSE request, command field 0x{message.field:04x}")
        return True

    async def _echo(self, context: AcceptedContext, message_id: int) -> None:
        rsp = C_ECHO()
        rsp.MessageIDBeingRespondedTo = message_id
        rsp.AffectedSOPClassUID = context.abstract_syntax
        ok = context.service == VERIFICATION
        rsp.Status = STATUS_SUCCESS if ok else STATUS_SOP_CLASS_NOT_SUPPORTED
        self._stats.echoes += 1
        await self._send(encode_message(rsp, context.context_id, self._send_max_pdu, request=False))

    async def _find(self, context: AcceptedContext, message_id: int, message: DimseMessage) -> None:
        self._stats.finds += 1
        if context.service not in (STUDY_ROOT_FIND, PATIENT_ROOT_FIND):
            result = FindResult(STATUS_SOP_CLASS_NOT_SUPPORTED, error_comment="not a query context")
        else:
            data = message.data
            identifier = (
                decode_dataset(BytesIO(data), context.transfer_syntax) if data is not None else None
            )
            if identifier is None:
                result = FindResult(
                    STATUS_UNABLE_TO_PROCESS, error_comment="undecodable identifier"
                )
            else:
                root = QueryRoot.STUDY if context.service == STUDY_ROOT_FIND else QueryRoot.PATIENT
                spec = self._state.spec
                result = find(
                    self._state.data(), root, identifier, counts=spec.profile.returns_counts
                )
        if result.identifiers:
            pending = pending_find_encoder(context, message_id, self._send_max_pdu)
            for index, ds in enumerate(result.identifiers, start=1):
                self._writer.write(pending(encode_dataset(ds, context.transfer_syntax)))
                if index % _DRAIN_EVERY == 0:
                    await self._drain()
        self._stats.find_responses += len(result.identifiers)
        final = C_FIND()
        final.MessageIDBeingRespondedTo = message_id
        final.AffectedSOPClassUID = context.abstract_syntax
        final.Status = result.status
        if result.error_comment is not None:
            final.ErrorComment = result.error_comment  # type: ignore[assignment]  # typed None
        await self._send(
            encode_message(final, context.context_id, self._send_max_pdu, request=False)
        )

    async def _store(
        self, context: AcceptedContext, message_id: int, message: DimseMessage
    ) -> None:
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = message_id
        rsp.AffectedSOPClassUID = context.abstract_syntax
        instance_uid = message.command.text("AffectedSOPInstanceUID") or None
        with contextlib.suppress(TypeError, ValueError):  # an invalid UID is not echoed
            rsp.AffectedSOPInstanceUID = instance_uid
        if context.service == STORAGE:
            rsp.Status = STATUS_SUCCESS
            self._state.stored += 1
            self._stats.stores += 1
        else:
            rsp.Status = STATUS_SOP_CLASS_NOT_SUPPORTED
        await self._send(encode_message(rsp, context.context_id, self._send_max_pdu, request=False))

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._drain()

    async def _drain(self) -> None:
        async with asyncio.timeout(self._limits.idle_timeout):
            await self._writer.drain()


async def serve_association(
    state: HostState,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    limits: Limits,
    stats: FarmStats,
) -> None:
    """Serve one connection to a well-behaved host, from A-ASSOCIATE-RQ to release or abort.

    Raises ProtocolError/TimeoutError/OSError for peers that misbehave; the farm counts them.
    """
    async with asyncio.timeout(limits.association_timeout):
        pdu = await read_pdu(reader, MAX_ASSOCIATION_PDU)
    if pdu.pdu_type != ASSOCIATE_RQ:
        writer.write(encode_abort(source=2, reason=ABORT_UNEXPECTED_PDU))
        raise MalformedPdu(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu.pdu_type:02x}")
    rq = A_ASSOCIATE_RQ()
    try:
        rq.decode(pdu.data)
    except Exception:  # pynetdicom raises assorted errors on bad bytes
        writer.write(encode_abort(source=2, reason=ABORT_INVALID_PARAMETER))
        raise MalformedPdu("undecodable A-ASSOCIATE-RQ") from None
    answer = negotiate(state.spec, rq)
    writer.write(answer.pdu)
    async with asyncio.timeout(limits.idle_timeout):
        await writer.drain()
    if isinstance(answer, Rejected):
        stats.associations_rejected += 1
        return
    stats.associations_accepted += 1
    conversation = _Conversation(
        state, reader, writer, answer.contexts, answer.peer_max_pdu, limits, stats
    )
    try:
        await conversation.run()
    except (MalformedPdu, PduTooLarge, TimeoutError):
        # A-P-ABORT before closing, as an acceptor's provider does (PS3.8 9.3.8); best effort.
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(encode_abort(source=2, reason=ABORT_INVALID_PARAMETER))
        raise
