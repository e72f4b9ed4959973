"""C-GET and C-MOVE for the asyncio front end (PS3.4 C.4.2, C.4.3).

Statuses follow PS3.4 C.4.2/C.4.3 and pynetdicom's Q/R service class: refused by policy or
identifier 0xC413 (C-GET) / 0xC514 (C-MOVE); the index cannot list the matches 0xA701; move
destination not registered 0xA801; more than 65535 matches 0xC416 / 0xC516; cancelled 0xFE00
(with the number of sub-operations not started); some sub-operations failed or warned 0xB000;
all failed 0xA702. Every final status after sub-operations carries the completed, failed and
warning counts, and the Failed SOP Instance UID List when any failed (PS3.4 C.4.2.1.4.2).

A registered C-MOVE destination that rejects the association, cannot be reached, aborts or
stops answering mid-transfer fails the sub-operations it did not complete (0xA702 / 0xB000,
with an Error Comment saying why); the requesting association stays up.

What is retrieved, how it is read (converted, decompressed for a peer that accepts only
uncompressed syntaxes) and audited is the archive service's (`service.retrieve`, shared
with WADO-RS); this module keeps the transport: identifiers,
presentation contexts, sub-associations, Pending/final responses and their statuses.

The audit log fails closed: when the line that opens a retrieve (`move-request`) cannot be made
durable, nothing is sent and the answer is 0xA702 ("Refused: Out of Resources - Unable to perform
sub-operations"); when the closing `retrieve` line cannot, the final response is 0xA702 with the
counts. The closing line is written however the operation ends (done, cancelled, cut off, the
destination lost) and accounts for every sub-operation, the one in flight included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE

from pacsguard.archive.dimse.aio_negotiation import AcceptedContext
from pacsguard.archive.dimse.aio_session import set_error_comment
from pacsguard.archive.dimse.identifiers import (
    CANCELLED,
    MOVE_DESTINATION_UNKNOWN,
    PENDING,
    BadIdentifier,
    retrieve_keys,
)
from pacsguard.archive.model import InstanceRecord
from pacsguard.archive.security.principal import Action
from pacsguard.archive.service import Denied, Retrieval, deliverable_syntaxes
from pacsguard.dicom import uids
from pacsguard.dicom.client import Association, Timeouts, request_association
from pacsguard.dicom.dimse import encode_dataset
from pacsguard.dicom.stream import ReadChunk, encode_store_command, send_data_set
from pacsguard.dicom.ul import AssociationRejected, ProposedContext
from pacsguard.errors import AuditLogError, MalformedPdu, PeerClosed, ProtocolError

if TYPE_CHECKING:
    from pacsguard.archive.dimse.aio_session import AssociationSession, Operation

GET_REFUSED: Final = 0xC413
MOVE_REFUSED: Final = 0xC514
#: Refused: Out of Resources - Unable to calculate number of matches (the index failed).
MATCHES_UNAVAILABLE: Final = 0xA701
GET_TOO_MANY: Final = 0xC416
MOVE_TOO_MANY: Final = 0xC516
SUB_OPERATIONS_FAILED: Final = 0xA702
#: PS3.4 C.4.2.1.5 / C.4.3.1.4: Refused: Out of Resources - Unable to perform sub-operations.
OUT_OF_RESOURCES_SUB_OPERATIONS: Final = 0xA702
SUB_OPERATIONS_WARNING: Final = 0xB000
_WARNINGS: Final = frozenset({0xB000, 0xB006, 0xB007})
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

    def fail_all(self, records: Sequence[InstanceRecord]) -> None:
        """Count `records` (not sent, or lost with their sub-association) as failed."""
        for record in records:
            self.record(record.sop_instance_uid, None)

    def fill(self, rsp: C_GET | C_MOVE, *, remaining: bool) -> None:
        """The sub-operation counts; Remaining only in Pending and Cancel responses."""
        if remaining:
            rsp.NumberOfRemainingSuboperations = self.remaining
        rsp.NumberOfCompletedSuboperations = self.completed
        rsp.NumberOfFailedSuboperations = self.failed
        rsp.NumberOfWarningSuboperations = self.warning

    def failed_list(self) -> Dataset | None:
        """The response identifier: the Failed SOP Instance UID List, when any failed."""
        if not self.failed_uids:
            return None
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = self.failed_uids
        return failed


class DestinationLost(Exception):
    """The C-MOVE sub-association broke (aborted, closed, timed out): the instance in flight
    and every one after it are failed sub-operations. `comment` goes into the Error Comment."""

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a retrieve is answered before any sub-operation: a status and an Error Comment."""

    status: int
    comment: str


async def _retrieval(
    session: AssociationSession,
    identifier: Dataset | None,
    action: Action,
    refused: int,
    destination: str | None = None,
) -> Retrieval | Refusal:
    """The service's retrieve (authorized, its matches chosen and audited), or why not:
    `refused` for an unusable identifier or a denial, 0xA701 when the index cannot list them,
    0xA702 when the audit log cannot record the request."""
    if identifier is None:
        return Refusal(refused, "no identifier")
    service = session.env.service
    try:
        level, keys = retrieve_keys(identifier)
        return await session.env.call(
            lambda: service.retrieve(
                session.principal, action, level, keys, destination=destination
            )
        )
    except BadIdentifier as exc:
        return Refusal(refused, str(exc))
    except Denied:
        return Refusal(refused, "not authorized")
    except AuditLogError:  # the log said why, once
        return Refusal(OUT_OF_RESOURCES_SUB_OPERATIONS, "audit log unavailable")
    except Exception as exc:  # the index failed: say so, keep the association
        log.error("retrieve: the index could not list the matches: %s", exc.__class__.__name__)
        return Refusal(MATCHES_UNAVAILABLE, "index unavailable: matches not counted")


async def send_record(
    session: AssociationSession,
    retrieval: Retrieval,
    record: InstanceRecord,
    transfer_syntax: str,
    send: SendInstance,
) -> int | None:
    """Stream one stored instance through `send` in `transfer_syntax`; None when the service
    cannot read or convert it. Errors on the wire (from `send`) propagate: they end the
    association."""
    env = session.env
    data = await env.call(retrieval.open, record, (transfer_syntax,))
    if data is None:
        return None
    try:

        async def read(size: int) -> bytes:
            return await env.call(data.read, size)

        return await send(read)
    finally:
        with contextlib.suppress(Exception):
            data.close()


def _best(record: InstanceRecord, candidates: Sequence[tuple[int, str]]) -> tuple[int, str] | None:
    """(context id, transfer syntax) to send `record` on: its stored syntax if accepted, else
    one the service can convert it to (`deliverable_syntaxes`), in the candidates' order."""
    stored, *converted = deliverable_syntaxes(record)
    for cid, ts in candidates:
        if ts == stored:
            return cid, ts
    for cid, ts in candidates:
        if ts in converted:
            return cid, ts
    return None


def _final_status(counts: Counts, total: int) -> int:
    """0x0000 all completed; 0xA702 all failed; 0xB000 anything in between (PS3.4 C.4.2.3.1)."""
    if not counts.failed and not counts.warning:
        return 0x0000
    return SUB_OPERATIONS_FAILED if counts.failed == total else SUB_OPERATIONS_WARNING


async def _respond(
    session: AssociationSession,
    rsp: C_GET | C_MOVE,
    context: AcceptedContext,
    message_id: int,
    status: int,
    counts: Counts | None,
    *,
    comment: str | None = None,
    operation: Operation | None = None,
) -> None:
    """One C-GET/C-MOVE response; a final one (not Pending) is marked on `operation`."""
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = context.abstract_syntax
    rsp.Status = status
    if counts is not None:
        counts.fill(rsp, remaining=status in (PENDING, CANCELLED))
        if status != PENDING:
            identifier = counts.failed_list()
            if identifier is not None:
                rsp.Identifier = encode_dataset(identifier, context.transfer_syntax)
    if comment:
        set_error_comment(rsp, comment)
    await session.channel.respond(rsp, context.context_id)
    if operation is not None and status != PENDING:
        operation.answered = True


async def _run_sub_operations(
    session: AssociationSession,
    context: AcceptedContext,
    message_id: int,
    retrieval: Retrieval,
    operation: Operation,
    make_rsp: Callable[[], C_GET | C_MOVE],
    send_one: Callable[[InstanceRecord], Awaitable[int | None]],
    *,
    lost: str | None = None,
) -> None:
    """Send each record, Pending after each; a C-CANCEL stops before the next one (0xFE00),
    and `lost` (no sub-association at all) fails every one at once. Then audit every
    sub-operation (also when the operation is cut off, with the one in flight), then send the
    final response: 0xA702 if the audit failed."""
    records = retrieval.records
    counts = Counts(remaining=len(records))
    tally = retrieval.tally
    comment = lost
    cancelled = False
    try:
        if lost is not None:  # none could be sent
            counts.fail_all(records)
            tally.fail_all()
        for position, record in enumerate(records if lost is None else ()):
            if operation.cancelled.is_set():
                cancelled = True
                break
            tally.begin()
            try:
                status = await send_one(record)
            except DestinationLost as exc:  # it may have arrived: it stays in flight
                counts.fail_all(records[position:])
                comment = exc.comment
                break
            tally.end(sent=status is not None)
            counts.record(record.sop_instance_uid, status)
            if counts.remaining:
                await _respond(session, make_rsp(), context, message_id, PENDING, counts)
    finally:
        audited = await _finish(session, retrieval)
    if cancelled:
        final, comment = CANCELLED, "cancelled by the requester"
    else:
        final = _final_status(counts, len(records))
        if counts.failed and comment is None:  # refused, unreadable, or no usable context
            comment = f"{counts.failed} of {len(records)} sub-operations failed"
            if retrieval.why_not:  # e.g. over the decompression limit (cut to 64 characters)
                comment = retrieval.why_not
    if not audited:
        final, comment = OUT_OF_RESOURCES_SUB_OPERATIONS, "audit log unavailable"
    await _respond(
        session, make_rsp(), context, message_id, final, counts,
        comment=comment if final != 0x0000 else None, operation=operation,
    )  # fmt: skip


async def _finish(session: AssociationSession, retrieval: Retrieval) -> bool:
    """The service's closing line of the retrieve; False when it could not be written."""
    try:
        await session.env.call(retrieval.finish)
    except AuditLogError:
        return False  # the log said why, once
    except Exception:
        log.exception("retrieve audit failed")
        return False
    return True


async def _refuse(
    session: AssociationSession,
    rsp: C_GET | C_MOVE,
    context: AcceptedContext,
    message_id: int,
    operation: Operation,
    status: int,
    comment: str,
) -> None:
    await _respond(
        session, rsp, context, message_id, status, None, comment=comment, operation=operation
    )


async def serve_get(
    session: AssociationSession,
    context: AcceptedContext,
    message_id: int,
    identifier: Dataset | None,
    operation: Operation,
) -> None:
    """C-GET: C-STORE sub-operations back over this association (SCP/SCU role reversal)."""
    found = await _retrieval(session, identifier, Action.GET, GET_REFUSED)
    if isinstance(found, Refusal):
        await _refuse(session, C_GET(), context, message_id, operation, found.status, found.comment)
        return
    if len(found.records) > 0xFFFF:
        await _refuse(
            session, C_GET(), context, message_id, operation, GET_TOO_MANY, "over 65535 matches"
        )
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
            try:
                await channel.send(encode_store_command(rq, chosen[0], channel.max_pdu))
                await send_data_set(channel.send, read, chosen[0], channel.max_pdu)
            except BaseException:
                channel.broken = True  # part of a message is out: nothing more can follow
                raise
            async with asyncio.timeout(session.env.settings.dimse_timeout):
                rsp = await operation.store_responses.get()
            status = rsp.command.status
            if status is None:
                raise MalformedPdu("C-STORE-RSP without a Status")
            return status

        return await send_record(session, found, record, chosen[1], send)

    await _run_sub_operations(session, context, message_id, found, operation, C_GET, send_one)


def _move_contexts(records: list[InstanceRecord]) -> tuple[ProposedContext, ...]:
    proposed: list[ProposedContext] = []
    for sop_class, ts in sorted({(r.sop_class_uid, r.transfer_syntax_uid) for r in records}):
        syntaxes = [t for t in (ts, uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)]
        unique = tuple(dict.fromkeys(str(t) for t in syntaxes if t))
        proposed.append(ProposedContext(2 * len(proposed) + 1, sop_class, unique))
    return tuple(proposed[:_MAX_MOVE_CONTEXTS])


def _why_no_association(exc: BaseException) -> str:
    """An Error Comment for a destination we could not associate with."""
    if isinstance(exc, ssl.SSLError):
        return "TLS with the move destination failed"
    if isinstance(exc, ConnectionRefusedError):
        return "move destination refused the connection"
    if isinstance(exc, TimeoutError):
        return "move destination did not answer in time"
    return "move destination unreachable"


def _why_lost(exc: BaseException) -> str:
    """An Error Comment for a sub-association that broke mid-transfer."""
    if isinstance(exc, TimeoutError):
        return "move destination timed out mid-transfer"
    if isinstance(exc, PeerClosed):
        return "move destination aborted the association"
    if isinstance(exc, OSError):
        return "connection to move destination lost"
    return "transfer to move destination failed"


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
        await _refuse(
            session, C_MOVE(), context, message_id, operation,
            MOVE_DESTINATION_UNKNOWN, "move destination not registered",
        )  # fmt: skip
        return
    found = await _retrieval(session, identifier, Action.MOVE, MOVE_REFUSED, destination_ae)
    if isinstance(found, Refusal):
        await _refuse(
            session, C_MOVE(), context, message_id, operation, found.status, found.comment
        )
        return
    if len(found.records) > 0xFFFF:
        await _refuse(
            session, C_MOVE(), context, message_id, operation, MOVE_TOO_MANY, "over 65535 matches"
        )
        return
    if not found.records:
        await _respond(
            session, C_MOVE(), context, message_id, 0x0000, Counts(0), operation=operation
        )
        return
    settings = session.env.settings
    lost: str | None = None
    assoc: Association | None = None
    try:
        answer, assoc = await request_association(
            destination.host,
            destination.port,
            calling_ae=settings.ae_title,
            called_ae=destination_ae,
            contexts=_move_contexts(found.records),
            timeouts=Timeouts(connect=settings.acse_timeout, read=settings.dimse_timeout),
            tls=destination.tls,
        )
        if isinstance(answer, AssociationRejected) or assoc is None:
            lost = "move destination rejected the association"
    except (OSError, TimeoutError, ProtocolError) as exc:  # ssl.SSLError is an OSError
        log.info(
            "C-MOVE: no association with destination %s: %s",
            destination_ae,
            exc.__class__.__name__,
        )
        lost = _why_no_association(exc)
    if assoc is None:
        await _run_sub_operations(
            session, context, message_id, found, operation, C_MOVE, _never,
            lost=lost or "move destination rejected the association",
        )  # fmt: skip
        return
    originator = (session.principal.ae_title, message_id)
    sub_association = assoc
    broken = False

    async def send_one(record: InstanceRecord) -> int | None:
        nonlocal broken
        candidates = [
            (cx.context_id, str(cx.transfer_syntax))
            for cx in sub_association.accepted.contexts
            if cx.accepted and cx.abstract_syntax == record.sop_class_uid and cx.transfer_syntax
        ]
        chosen = _best(record, candidates)
        if chosen is None:
            return None
        result = next(c for c in sub_association.accepted.contexts if c.context_id == chosen[0])

        async def send(read: ReadChunk) -> int:
            nonlocal broken
            try:
                return await sub_association.store_stream(
                    result, record.sop_instance_uid, read, move_originator=originator
                )
            except Exception as exc:
                broken = True
                log.info("C-MOVE: sub-association to %s lost: %s", destination_ae,
                         exc.__class__.__name__)  # fmt: skip
                raise DestinationLost(_why_lost(exc)) from None

        return await send_record(session, found, record, chosen[1], send)

    try:
        await _run_sub_operations(session, context, message_id, found, operation, C_MOVE, send_one)
    finally:
        if broken:
            await sub_association.abort()
        else:
            await sub_association.release()


async def _never(record: InstanceRecord) -> int | None:
    raise AssertionError("no sub-operation is sent without a sub-association")
