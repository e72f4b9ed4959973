"""C-GET and C-MOVE for the asyncio front end (PS3.4 C.4.2, C.4.3).

Statuses follow PS3.4 C.4.2/C.4.3 and pynetdicom's Q/R service class: refused by policy or
identifier 0xC413 (C-GET) / 0xC514 (C-MOVE), move destination unknown or unreachable 0xA801,
more than 65535 matches 0xC416 / 0xC516, cancelled 0xFE00, some sub-operations failed 0xB000,
all failed 0xA702 (with the Failed SOP Instance UID List). Instances are streamed from the blob
store in their stored transfer syntax; only Explicit <-> Implicit VR Little Endian conversion
decodes an instance in memory.

The audit log fails closed: when the line that opens a retrieve (`move-request`) cannot be made
durable, nothing is sent and the answer is 0xA702 ("Refused: Out of Resources - Unable to perform
sub-operations"); when the closing `retrieve` line cannot, the final response is 0xA702 with the
counts. The closing line is written however the operation ends (done, cancelled, cut off) and
accounts for every sub-operation, the one in flight included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, BinaryIO, Final

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE

from pacsguard.archive.dimse.aio_negotiation import AcceptedContext
from pacsguard.archive.dimse.identifiers import (
    CANCELLED,
    MOVE_DESTINATION_UNKNOWN,
    PENDING,
    BadIdentifier,
    retrieve_keys,
)
from pacsguard.archive.model import InstanceRecord
from pacsguard.archive.security.principal import Action
from pacsguard.archive.service import Denied, RetrieveTally
from pacsguard.dicom import uids
from pacsguard.dicom.client import Timeouts, request_association
from pacsguard.dicom.dimse import encode_dataset
from pacsguard.dicom.stream import ReadChunk, encode_store_command, send_data_set, skip_file_meta
from pacsguard.dicom.ul import AssociationRejected, ProposedContext
from pacsguard.errors import AuditLogError, MalformedPdu, ProtocolError

if TYPE_CHECKING:
    from pacsguard.archive.dimse.aio_session import AssociationSession, Operation

GET_REFUSED: Final = 0xC413
MOVE_REFUSED: Final = 0xC514
GET_TOO_MANY: Final = 0xC416
MOVE_TOO_MANY: Final = 0xC516
SUB_OPERATIONS_FAILED: Final = 0xA702
#: PS3.4 C.4.2.1.5 / C.4.3.1.4: Refused: Out of Resources - Unable to perform sub-operations.
OUT_OF_RESOURCES_SUB_OPERATIONS: Final = 0xA702
SUB_OPERATIONS_WARNING: Final = 0xB000
_WARNINGS: Final = frozenset({0xB000, 0xB006, 0xB007})
_UNCOMPRESSED: Final = frozenset(
    {str(uids.EXPLICIT_VR_LITTLE_ENDIAN), str(uids.IMPLICIT_VR_LITTLE_ENDIAN)}
)
_MAX_MOVE_CONTEXTS: Final = 128

log = logging.getLogger(__name__)

#: Sends one instance over a chosen context: (transfer syntax, chunk reader) -> C-STORE status.
SendInstance = Callable[[ReadChunk], Awaitable[int]]


@dataclass(slots=True)
class Counts:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def record(self, uid: str, status: int | None) -> None:
        self.remaining -= 1
        if status == 0x0000:
            self.completed += 1
        elif status in _WARNINGS:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)

    def fill(self, rsp: C_GET | C_MOVE, *, final: bool) -> None:
        if not final:
            rsp.NumberOfRemainingSuboperations = self.remaining
        rsp.NumberOfCompletedSuboperations = self.completed
        rsp.NumberOfFailedSuboperations = self.failed
        rsp.NumberOfWarningSuboperations = self.warning


async def _records(
    session: AssociationSession,
    identifier: Dataset | None,
    action: Action,
    refused: int,
    destination: str | None = None,
) -> list[InstanceRecord] | int:
    """The matches (their retrieve audited), or the status to refuse with."""
    if identifier is None:
        return refused
    service = session.env.service
    try:
        level, keys = retrieve_keys(identifier)
        return await session.env.call(
            lambda: service.instances_to_retrieve(
                session.principal, action, level, keys, destination=destination
            )
        )
    except (BadIdentifier, Denied):
        return refused
    except AuditLogError:
        return OUT_OF_RESOURCES_SUB_OPERATIONS


def _decode_spooled(stream: BinaryIO) -> Dataset:
    """Blob streams may be decrypting and not seekable, which pydicom needs (as handlers._read)."""
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as spool:
        shutil.copyfileobj(stream, spool, 1024 * 1024)
        spool.seek(0)
        return dcmread(spool)


async def send_record(
    session: AssociationSession, record: InstanceRecord, transfer_syntax: str, send: SendInstance
) -> int | None:
    """Stream one stored instance through `send`; None when it cannot be read or converted.
    Errors on the wire (from `send`) propagate: they end the association."""
    env = session.env
    try:
        stream = await env.call(env.service.open_instance, record)
    except (OSError, KeyError, ValueError):
        log.warning("stored instance could not be opened for retrieve")
        return None
    try:
        try:
            stored_syntax = await env.call(skip_file_meta, stream)
        except (MalformedPdu, OSError, ValueError):
            log.warning("stored instance could not be read for retrieve")
            return None
        if stored_syntax == transfer_syntax:

            async def read_stored(size: int) -> bytes:
                return await env.call(stream.read, size)

            return await send(read_stored)
        if stored_syntax not in _UNCOMPRESSED or transfer_syntax not in _UNCOMPRESSED:
            return None
        stream.close()
        try:
            stream = await env.call(env.service.open_instance, record)
            ds = await env.call(_decode_spooled, stream)
            data = BytesIO(encode_dataset(ds, transfer_syntax).getvalue())
        except Exception:
            log.warning("stored instance could not be converted for retrieve")
            return None

        async def read_converted(size: int) -> bytes:
            return data.read(size)

        return await send(read_converted)
    finally:
        with contextlib.suppress(Exception):
            stream.close()


def _best(record: InstanceRecord, candidates: Sequence[tuple[int, str]]) -> tuple[int, str] | None:
    """(context id, transfer syntax) to send `record` on: its stored syntax if accepted, else an
    uncompressed one when the record is uncompressed."""
    for cid, ts in candidates:
        if ts == record.transfer_syntax_uid:
            return cid, ts
    if record.transfer_syntax_uid in _UNCOMPRESSED:
        for cid, ts in candidates:
            if ts in _UNCOMPRESSED:
                return cid, ts
    return None


def _final_status(counts: Counts, total: int) -> tuple[int, Dataset | None]:
    if not counts.failed and not counts.warning:
        return 0x0000, None
    failed = Dataset()
    failed.FailedSOPInstanceUIDList = counts.failed_uids
    status = SUB_OPERATIONS_FAILED if counts.failed == total else SUB_OPERATIONS_WARNING
    return status, failed


async def _respond(
    session: AssociationSession,
    rsp: C_GET | C_MOVE,
    context: AcceptedContext,
    message_id: int,
    status: int,
    counts: Counts | None,
    identifier: Dataset | None = None,
    *,
    final: bool = True,
) -> None:
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = context.abstract_syntax
    rsp.Status = status
    if counts is not None:
        counts.fill(rsp, final=final)
    if identifier is not None:
        rsp.Identifier = encode_dataset(identifier, context.transfer_syntax)
    await session.channel.respond(rsp, context.context_id)


async def _run_sub_operations(
    session: AssociationSession,
    context: AcceptedContext,
    message_id: int,
    records: list[InstanceRecord],
    operation: Operation,
    make_rsp: Callable[[], C_GET | C_MOVE],
    send_one: Callable[[InstanceRecord], Awaitable[int | None]],
    destination: str | None,
) -> None:
    """Send each record, then audit every sub-operation (also when the operation is cut off,
    with the one in flight), then send the final response: a failure if the audit failed."""
    counts = Counts(remaining=len(records))
    tally = RetrieveTally(not_started=len(records))
    final: tuple[int, Dataset | None] = (CANCELLED, None)
    try:
        for record in records:
            if operation.cancelled.is_set():
                break
            tally.not_started -= 1
            tally.in_flight = 1
            status = await send_one(record)
            tally.in_flight = 0
            if status is None:
                tally.failed += 1
            else:
                tally.sent += 1
            counts.record(record.sop_instance_uid, status)
            if counts.remaining:
                await _respond(
                    session, make_rsp(), context, message_id, PENDING, counts, final=False
                )
        else:
            final = _final_status(counts, len(records))
    finally:
        audited = await _audit_retrieve(session, records, destination, tally)
    if not audited:
        final = (OUT_OF_RESOURCES_SUB_OPERATIONS, None)
    await _respond(session, make_rsp(), context, message_id, final[0], counts, final[1])


async def _audit_retrieve(
    session: AssociationSession,
    records: list[InstanceRecord],
    destination: str | None,
    tally: RetrieveTally,
) -> bool:
    env = session.env
    try:
        await env.call(
            lambda: env.service.audit_retrieve(
                session.principal, records, destination=destination, tally=tally
            )
        )
    except AuditLogError:
        return False  # the log said why, once
    except Exception:
        log.exception("retrieve audit failed")
        return False
    return True


async def serve_get(
    session: AssociationSession,
    context: AcceptedContext,
    message_id: int,
    identifier: Dataset | None,
    operation: Operation,
) -> None:
    """C-GET: C-STORE sub-operations back over this association (SCP/SCU role reversal)."""
    found = await _records(session, identifier, Action.GET, GET_REFUSED)
    if isinstance(found, int):
        await _respond(session, C_GET(), context, message_id, found, None)
        return
    if len(found) > 0xFFFF:
        await _respond(session, C_GET(), context, message_id, GET_TOO_MANY, None)
        return
    sub_ids = iter(range(1, 1 << 16))
    channel = session.channel

    async def send_one(record: InstanceRecord) -> int | None:
        candidates = [
            (cx.context_id, cx.transfer_syntax)
            for cx in session.contexts.values()
            if cx.abstract_syntax == record.sop_class_uid and cx.acceptor_is_scu
        ]
        chosen = _best(record, candidates)
        if chosen is None:
            return None

        async def send(read: ReadChunk) -> int:
            rq = C_STORE()
            rq.MessageID = next(sub_ids)
            rq.AffectedSOPClassUID = record.sop_class_uid
            rq.AffectedSOPInstanceUID = record.sop_instance_uid
            rq.Priority = 2
            await channel.send(encode_store_command(rq, chosen[0], channel.max_pdu))
            await send_data_set(channel.send, read, chosen[0], channel.max_pdu)
            async with asyncio.timeout(session.env.settings.dimse_timeout):
                rsp = await operation.store_responses.get()
            status = rsp.command.status
            if status is None:
                raise MalformedPdu("C-STORE-RSP without a Status")
            return status

        return await send_record(session, record, chosen[1], send)

    await _run_sub_operations(session, context, message_id, found, operation, C_GET, send_one, None)


def _move_contexts(records: list[InstanceRecord]) -> tuple[ProposedContext, ...]:
    proposed: list[ProposedContext] = []
    for sop_class, ts in sorted({(r.sop_class_uid, r.transfer_syntax_uid) for r in records}):
        syntaxes = [t for t in (ts, uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)]
        unique = tuple(dict.fromkeys(str(t) for t in syntaxes if t))
        proposed.append(ProposedContext(2 * len(proposed) + 1, sop_class, unique))
    return tuple(proposed[:_MAX_MOVE_CONTEXTS])


async def serve_move(
    session: AssociationSession,
    context: AcceptedContext,
    message_id: int,
    identifier: Dataset | None,
    destination_ae: str,
    operation: Operation,
) -> None:
    """C-MOVE: a sub-association to the registered destination carries the C-STOREs."""
    destination = session.env.destinations(destination_ae)
    if destination is None:
        await _respond(session, C_MOVE(), context, message_id, MOVE_DESTINATION_UNKNOWN, None)
        return
    found = await _records(session, identifier, Action.MOVE, MOVE_REFUSED, destination_ae)
    if isinstance(found, int):
        await _respond(session, C_MOVE(), context, message_id, found, None)
        return
    if len(found) > 0xFFFF:
        await _respond(session, C_MOVE(), context, message_id, MOVE_TOO_MANY, None)
        return
    if not found:
        await _respond(session, C_MOVE(), context, message_id, 0x0000, Counts(0))
        return
    settings = session.env.settings
    try:
        answer, assoc = await request_association(
            destination.host,
            destination.port,
            calling_ae=settings.ae_title,
            called_ae=destination_ae,
            contexts=_move_contexts(found),
            timeouts=Timeouts(connect=settings.acse_timeout, read=settings.dimse_timeout),
            tls=destination.tls,
        )
    except (OSError, TimeoutError, ProtocolError) as exc:  # ssl.SSLError is an OSError
        log.info(
            "C-MOVE: no association with destination %s: %s",
            destination_ae,
            exc.__class__.__name__,
        )
        answer, assoc = None, None
    if assoc is None or isinstance(answer, AssociationRejected) or answer is None:
        await _respond(session, C_MOVE(), context, message_id, MOVE_DESTINATION_UNKNOWN, None)
        return
    originator = (session.principal.ae_title, message_id)

    async def send_one(record: InstanceRecord) -> int | None:
        candidates = [
            (cx.context_id, str(cx.transfer_syntax))
            for cx in assoc.accepted.contexts
            if cx.accepted and cx.abstract_syntax == record.sop_class_uid and cx.transfer_syntax
        ]
        chosen = _best(record, candidates)
        if chosen is None:
            return None
        result = next(c for c in assoc.accepted.contexts if c.context_id == chosen[0])

        async def send(read: ReadChunk) -> int:
            return await assoc.store_stream(
                result, record.sop_instance_uid, read, move_originator=originator
            )

        return await send_record(session, record, chosen[1], send)

    try:
        await _run_sub_operations(
            session, context, message_id, found, operation, C_MOVE, send_one, destination_ae
        )
    finally:
        await assoc.release()
