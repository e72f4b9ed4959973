"""Retrieve: the instances a C-GET, C-MOVE or WADO-RS asks for, authorized, read and audited.

One call for every front end: `retrieve(principal, action, level, uids)` authorizes, chooses
the instances (every instance under each unique key, in study/series/instance order) and
writes the `move-request` line (instances about to be accessed, by whom, for which
destination) before it returns a `Retrieval`. The front end then sends each instance its own
way (C-STORE sub-operations, a multipart body), reading it through `Retrieval.open` in a
transfer syntax it can deliver, and counts each one on `Retrieval.tally`; `Retrieval.finish`
writes the closing `retrieve` line, which accounts for every instance (`RetrieveTally`),
however the retrieve ended. Both lines are the operation's: `AuditLogError` when one cannot
be made durable, and the front end answers with a failure (nothing is sent without the first).

Transcoding: an instance is read in its stored transfer syntax, or converted between Explicit
and Implicit VR Little Endian (pydicom, in memory: small uncompressed objects). No codec for
compressed syntaxes exists in the archive yet: those are delivered as stored or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO, Final, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.blobs import BlobStore
from pacsguard.archive.model import InstanceRecord
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service._core import ServiceCore, _participant
from pacsguard.dicom import uids
from pacsguard.dicom.dimse import encode_dataset
from pacsguard.dicom.levels import Level
from pacsguard.dicom.stream import skip_file_meta
from pacsguard.errors import AuditLogError, MalformedPdu

log = logging.getLogger("pacsguard.archive.service")

#: The transfer syntaxes the archive converts between (PS3.5 A.1, A.2).
UNCOMPRESSED: Final = (str(uids.EXPLICIT_VR_LITTLE_ENDIAN), str(uids.IMPLICIT_VR_LITTLE_ENDIAN))
_SPOOL_IN_MEMORY: Final = 16 * 1024 * 1024


def deliverable_syntaxes(record: InstanceRecord) -> tuple[str, ...]:
    """The transfer syntaxes `record` can be read in, its stored one first."""
    stored = record.transfer_syntax_uid
    if stored in UNCOMPRESSED:
        return (stored, *(ts for ts in UNCOMPRESSED if ts != stored))
    return (stored,)


@dataclass(slots=True)
class RetrieveTally:
    """Where each sub-operation of a retrieve ended: `sent` (the peer answered its C-STORE),
    `failed` (could not be sent: unreadable, or no presentation context for it), `in_flight`
    (being sent when the operation ended: it may have reached the peer) and `not_started`
    (cancelled or cut off before it began). They add up to the instances matched. DIMSE
    sends one instance at a time; WADO-RS may have several in one write."""

    sent: int = 0
    failed: int = 0
    in_flight: int = 0
    not_started: int = 0

    def begin(self) -> None:
        """One instance leaves `not_started` and is on its way."""
        self.not_started -= 1
        self.in_flight += 1

    def end(self, *, sent: bool) -> None:
        """An instance on its way arrived (`sent`) or could not be sent."""
        self.in_flight -= 1
        if sent:
            self.sent += 1
        else:
            self.failed += 1

    def fail_all(self) -> None:
        """None could be sent (a C-MOVE destination that cannot be reached)."""
        self.failed += self.not_started
        self.not_started = 0

    def detail(self) -> dict[str, str | int | bool]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "not_started": self.not_started,
        }


class InstanceData(Protocol):
    """One instance being read: in `transfer_syntax`, `read` until b"" (blocking), `close`."""

    transfer_syntax: str

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Opened:
    transfer_syntax: str
    stream: BinaryIO

    def read(self, size: int = -1, /) -> bytes:
        return self.stream.read(size)

    def close(self) -> None:
        self.stream.close()


@dataclass(slots=True)
class Retrieval:
    """One retrieve under way: its instances, their tally, reading them, and the last line."""

    principal: Principal
    action: Action
    records: list[InstanceRecord]
    destination: str | None
    _blobs: BlobStore
    _audit: AuditSink
    tally: RetrieveTally = field(default_factory=RetrieveTally)
    finished: bool = False

    def __post_init__(self) -> None:
        self.tally.not_started = len(self.records)

    def open(
        self, record: InstanceRecord, accepted: Collection[str], *, part10: bool = False
    ) -> InstanceData | None:
        """`record`'s bytes in the first of `deliverable_syntaxes(record)` that is `accepted`:
        the data set alone (DIMSE), or with `part10` the whole file (WADO-RS: the stored file
        byte for byte when no conversion is needed). None, logged, when the instance cannot
        be read or converted: the caller counts it failed. Blocking."""
        chosen = next((ts for ts in deliverable_syntaxes(record) if ts in accepted), None)
        if chosen is None:
            return None
        try:
            stream = self._blobs.open(record.blob_key)
        except (OSError, KeyError, ValueError):
            log.warning("stored instance could not be opened for retrieve")
            return None
        try:
            stored = skip_file_meta(stream)
        except (MalformedPdu, OSError, ValueError):
            stream.close()
            log.warning("stored instance could not be read for retrieve")
            return None
        if stored == chosen:
            if not part10:
                return _Opened(stored, stream)
            # From the start again: the File Meta Information is wanted too. A blob stream
            # rewinds inside what it has buffered (its first chunk, already decrypted), where
            # opening it again would derive its key and decrypt that chunk a second time.
            try:
                if stream.seekable():
                    stream.seek(0)
                    return _Opened(stored, stream)
                stream.close()
                return _Opened(stored, self._blobs.open(record.blob_key))
            except (OSError, KeyError, ValueError):
                stream.close()
                log.warning("stored instance could not be opened for retrieve")
                return None
        stream.close()
        if stored not in UNCOMPRESSED or chosen not in UNCOMPRESSED:
            return None  # the index said otherwise: the blob is not what was recorded
        try:
            with self._blobs.open(record.blob_key) as again:
                ds = _decode_spooled(again)
            return _Opened(chosen, BytesIO(_converted(ds, chosen, part10=part10)))
        except Exception:
            log.warning("stored instance could not be converted for retrieve")
            return None

    def finish(self) -> None:
        """The line that ends the retrieve, counting every instance (`tally`); AuditLogError
        when it cannot be made durable. Once: a second call does nothing."""
        if self.finished:
            return
        self.finished = True
        tally = self.tally
        self._audit.emit(
            AuditEvent(
                EventType.RETRIEVE,
                EventAction.READ,
                EventOutcome.SUCCESS
                if tally.sent == len(self.records)
                else EventOutcome.MINOR_FAILURE,
                _retrieve_participants(self.principal, self.destination),
                _studies(self.records),
                tally.detail(),
            )
        )


def _decode_spooled(stream: BinaryIO) -> Dataset:
    """Blob streams may be decrypting and not seekable, which pydicom needs."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        shutil.copyfileobj(stream, spool, 1024 * 1024)
        spool.seek(0)
        return dcmread(spool)


def _converted(ds: Dataset, transfer_syntax: str, *, part10: bool) -> bytes:
    if not part10:
        return encode_dataset(ds, transfer_syntax).getvalue()
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


class Retrieves(ServiceCore):
    """C-GET / C-MOVE / WADO-RS: which instances, their bytes, and the audit lines."""

    def retrieve(
        self,
        principal: Principal,
        action: Action,
        level: Level,
        uids: list[str],
        *,
        destination: str | None = None,
    ) -> Retrieval:
        """The instances under the unique keys `uids` at `level`, authorized (`action`: GET for
        C-GET and WADO-RS, MOVE for C-MOVE; Denied otherwise). When there are any, the
        `move-request` line is durable before this returns: AuditLogError otherwise, and
        nothing may be sent. An index failure is audited (nothing was retrieved) and raised."""
        self.require(principal, action)
        found: dict[str, InstanceRecord] = {}
        try:
            for uid in uids:
                for record in self._index.instances(level, uid):
                    found[record.sop_instance_uid] = record
        except Exception:
            with contextlib.suppress(AuditLogError):  # the index's failure is the answer
                self._audit.emit(
                    AuditEvent(
                        EventType.RETRIEVE,
                        EventAction.READ,
                        EventOutcome.SERIOUS_FAILURE,
                        _retrieve_participants(principal, destination),
                        detail={"action": action.value, "result": "index unavailable"},
                    )
                )
            raise
        records = list(found.values())
        if records:
            self._audit.emit(
                AuditEvent(
                    EventType.MOVE_REQUEST,
                    EventAction.READ,
                    EventOutcome.SUCCESS,
                    _retrieve_participants(principal, destination),
                    _studies(records),
                    {"operation": action.value, "instances": len(records)},
                )
            )
        return Retrieval(principal, action, records, destination, self._blobs, self._audit)


def _retrieve_participants(
    principal: Principal, destination: str | None
) -> tuple[Participant, ...]:
    own = (_participant(principal),)
    return own + ((Participant(ae_title=destination, requestor=False),) if destination else ())


def _studies(records: list[InstanceRecord]) -> tuple[tuple[str, str], ...]:
    return tuple(("study", s) for s in sorted({r.study_instance_uid for r in records}))
