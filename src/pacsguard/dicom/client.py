"""An asyncio DICOM association requestor: connect, negotiate, exchange DIMSE, release.

Built for scanning: every read is bounded in size and time, TCP_NODELAY is set, and nothing is
retained after the conversation ends. Errors from the remote surface as `ProtocolError`
subclasses or `TimeoutError`; the probe layer turns them into observations.

Negotiating, releasing and aborting need neither pydicom nor pynetdicom (`pacsguard.dicom.acse`):
a verification scan never imports them. The DIMSE methods (echo, find, store) import the message
codec, which needs both, the first time one is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from io import BytesIO
from typing import TYPE_CHECKING, Final

from pacsguard.dicom import uids
from pacsguard.dicom.command import CommandField
from pacsguard.dicom.connect import (
    MAX_INCOMING_PDU,
    ConnectTimeout,
    Timeouts,
    close_after_reject,
    close_within_deadline,
    close_writer,
    open_connection,
    set_nodelay,
)
from pacsguard.dicom.ul import (
    ABORT,
    MAX_ASSOCIATION_PDU,
    P_DATA_TF,
    RELEASE_RP,
    RELEASE_RQ,
    RELEASE_RQ_BYTES,
    AssociationAccepted,
    AssociationRejected,
    ContextResult,
    ProposedContext,
    decode_associate_answer,
    encode_abort,
    encode_associate_rq,
    read_pdu,
)
from pacsguard.errors import MalformedPdu, PeerClosed

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from pacsguard.dicom.dimse import DimseMessage
    from pacsguard.dicom.stream import ReadChunk

__all__ = [  # the connection helpers live in `connect` (no pydicom there); named here too
    "MAX_INCOMING_PDU",
    "OUR_MAX_PDU",
    "Association",
    "ConnectTimeout",
    "Timeouts",
    "associate",
    "close_writer",
    "request_association",
    "set_nodelay",
]

#: The maximum PDU we tell peers we accept; we hold them to MAX_INCOMING_PDU (slack for peers
#: that ignore it, as several do).
OUR_MAX_PDU: Final = 64 * 1024


class Association:
    """One established association; use `request_association` to make one."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accepted: AssociationAccepted,
        timeouts: Timeouts,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.accepted = accepted
        self._timeouts = timeouts
        self._message_id = 0
        peer_max = accepted.max_pdu or 0
        self._send_max_pdu = peer_max if 0 < peer_max <= OUR_MAX_PDU else OUR_MAX_PDU

    def _next_id(self) -> int:
        self._message_id = (self._message_id % 0xFFFF) + 1
        return self._message_id

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        async with asyncio.timeout(self._timeouts.read):
            await self._writer.drain()

    async def _receive_message(self) -> DimseMessage:
        from pacsguard.dicom.dimse import MessageAssembler

        assembler = MessageAssembler()
        while True:
            async with asyncio.timeout(self._timeouts.read):
                pdu = await read_pdu(self._reader, MAX_INCOMING_PDU)
            if pdu.pdu_type == P_DATA_TF:
                message = assembler.feed(pdu)
                if message is not None:
                    return message
            elif pdu.pdu_type == ABORT:
                raise PeerClosed("peer sent A-ABORT")
            elif pdu.pdu_type == RELEASE_RQ:
                raise PeerClosed("peer asked to release in the middle of a request")
            else:
                raise MalformedPdu(f"unexpected PDU type 0x{pdu.pdu_type:02x} during DIMSE")

    async def echo(self, context: ContextResult) -> int:
        """Send C-ECHO-RQ; return the response status."""
        from pynetdicom.dimse_primitives import C_ECHO

        from pacsguard.dicom.dimse import encode_message

        primitive = C_ECHO()
        primitive.MessageID = self._next_id()
        primitive.AffectedSOPClassUID = uids.VERIFICATION
        await self._send(
            encode_message(primitive, context.context_id, self._send_max_pdu, request=True)
        )
        return _status(await self._receive_message(), CommandField.C_ECHO_RSP)

    async def find(
        self, context: ContextResult, identifier: Dataset
    ) -> AsyncIterator[tuple[int, Dataset | None]]:
        """Send C-FIND-RQ; yield (status, identifier) for each response, the final one last.

        Breaking out of the iteration early leaves the association unusable; release or abort it.
        """
        from pynetdicom.dimse_primitives import C_FIND

        from pacsguard.dicom.dimse import decode_dataset, encode_dataset, encode_message

        primitive = C_FIND()
        primitive.MessageID = self._next_id()
        primitive.AffectedSOPClassUID = context.abstract_syntax
        primitive.Priority = 2  # low
        ts = context.transfer_syntax or uids.IMPLICIT_VR_LITTLE_ENDIAN
        primitive.Identifier = encode_dataset(identifier, ts)
        await self._send(
            encode_message(primitive, context.context_id, self._send_max_pdu, request=True)
        )
        while True:
            message = await self._receive_message()
            status = _status(message, CommandField.C_FIND_RSP)
            pending = status in (0xFF00, 0xFF01)
            data = message.data if pending else None
            ds = decode_dataset(BytesIO(data), ts) if data is not None else None
            yield status, ds
            if not pending:
                return

    async def store(self, context: ContextResult, sop_instance_uid: str, data_set: bytes) -> int:
        """Send C-STORE-RQ with an already encoded data set; return the response status.

        The scanner never calls this (an accepted storage context is its evidence); it exists
        for tests and tools that must send exactly the bytes they mean, malformed included.
        """
        from pynetdicom.dimse_primitives import C_STORE

        from pacsguard.dicom.dimse import encode_message

        primitive = C_STORE()
        primitive.MessageID = self._next_id()
        primitive.AffectedSOPClassUID = context.abstract_syntax
        primitive.AffectedSOPInstanceUID = sop_instance_uid
        primitive.Priority = 2
        primitive.DataSet = BytesIO(data_set)
        await self._send(
            encode_message(primitive, context.context_id, self._send_max_pdu, request=True)
        )
        return _status(await self._receive_message(), CommandField.C_STORE_RSP)

    async def store_stream(
        self,
        context: ContextResult,
        sop_instance_uid: str,
        read: ReadChunk,
        *,
        move_originator: tuple[str, int] | None = None,
    ) -> int:
        """Send C-STORE-RQ with a data set read chunk by chunk (never whole in memory); return
        the response status. `move_originator` is (AE title, message id) for C-MOVE sub-operations.
        """
        from pynetdicom.dimse_primitives import C_STORE

        from pacsguard.dicom.stream import encode_store_command, send_data_set

        primitive = C_STORE()
        primitive.MessageID = self._next_id()
        primitive.AffectedSOPClassUID = context.abstract_syntax
        primitive.AffectedSOPInstanceUID = sop_instance_uid
        primitive.Priority = 2
        if move_originator is not None:
            primitive.MoveOriginatorApplicationEntityTitle = move_originator[0]
            primitive.MoveOriginatorMessageID = move_originator[1]
        await self._send(encode_store_command(primitive, context.context_id, self._send_max_pdu))
        await send_data_set(self._send, read, context.context_id, self._send_max_pdu)
        return _status(await self._receive_message(), CommandField.C_STORE_RSP)

    async def release(self) -> None:
        """Orderly release (A-RELEASE-RQ/RP); falls back to closing if the peer does not answer."""
        try:
            await self._send(RELEASE_RQ_BYTES)
            async with asyncio.timeout(self._timeouts.read):
                while True:
                    pdu = await read_pdu(self._reader, MAX_INCOMING_PDU)
                    if pdu.pdu_type in (RELEASE_RP, ABORT):
                        break
        except (TimeoutError, OSError, PeerClosed, MalformedPdu):
            pass
        finally:
            await close_within_deadline(self._writer)

    async def abort(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.write(encode_abort())
        await close_within_deadline(self._writer)


async def request_association(
    host: str,
    port: int,
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[ProposedContext],
    timeouts: Timeouts,
    tls: ssl.SSLContext | None = None,
) -> tuple[AssociationAccepted | AssociationRejected, Association | None]:
    """Connect and negotiate. Returns the answer and, when accepted, the open association.

    Raises OSError/TimeoutError for connection failures and ProtocolError for bad answers.
    """
    reader, writer = await open_connection(host, port, timeouts=timeouts, tls=tls)
    return await associate(
        reader,
        writer,
        calling_ae=calling_ae,
        called_ae=called_ae,
        contexts=contexts,
        timeouts=timeouts,
    )


async def associate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[ProposedContext],
    timeouts: Timeouts,
) -> tuple[AssociationAccepted | AssociationRejected, Association | None]:
    """Negotiate on a connection `open_connection` made; it is closed unless accepted.

    Raises TimeoutError when no answer comes in time and ProtocolError for bad answers.
    """
    contexts = tuple(contexts)
    try:
        writer.write(encode_associate_rq(calling_ae, called_ae, contexts, OUR_MAX_PDU))
        async with asyncio.timeout(timeouts.read):
            await writer.drain()
            pdu = await read_pdu(reader, MAX_ASSOCIATION_PDU)
        answer = decode_associate_answer(pdu, contexts)
    except BaseException:
        await close_within_deadline(writer)
        raise
    if isinstance(answer, AssociationRejected):
        await close_after_reject(writer)
        return answer, None
    return answer, Association(reader, writer, answer, timeouts)


def _status(message: DimseMessage, expected: CommandField) -> int:
    """The Status of a response of the `expected` kind; MalformedPdu for anything else."""
    if message.field != expected:
        raise MalformedPdu(f"expected {expected.name}, got command field 0x{message.field:04x}")
    status = message.command.status
    if status is None:
        raise MalformedPdu(f"{expected.name} without a Status")
    return status
