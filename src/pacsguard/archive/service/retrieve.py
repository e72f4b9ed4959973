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

Transcoding, the same for every front end: an instance is read in its stored transfer
syntax; converted between Explicit and Implicit VR Little Endian (the header re-encoded by
pydicom, the pixel data copied from its byte range: `pixels.converted_pieces`); or, stored
compressed (JPEG, JPEG-LS, JPEG 2000, RLE: every syntax pydicom has a decoder plugin for
here, `pixels.decodable`), decompressed into either of them as it is read, one frame at a
time (`pixels.DecompressedReader`), when its decoded pixel data
fits `ServiceLimits.max_decompressed_bytes`. An instance that cannot be had as asked is None
from `open`, with the reason in `Retrieval.why_not` (`refusal` says it before anything is
sent). Metadata and frames read only the header and the byte ranges they need
(`Retrieval.layout`, `Retrieval.frames`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO, Final, Protocol

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
from pacsguard.archive.service import pixels
from pacsguard.archive.service._core import ServiceCore, _participant
from pacsguard.dicom import uids
from pacsguard.dicom.levels import Level
from pacsguard.dicom.stream import skip_file_meta
from pacsguard.errors import AuditLogError, MalformedPdu

log = logging.getLogger("pacsguard.archive.service")

#: The transfer syntaxes the archive converts between (PS3.5 A.1, A.2).
UNCOMPRESSED: Final = (str(uids.EXPLICIT_VR_LITTLE_ENDIAN), str(uids.IMPLICIT_VR_LITTLE_ENDIAN))


def deliverable_syntaxes(record: InstanceRecord) -> tuple[str, ...]:
    """The transfer syntaxes `record` can be read in, its stored one first (a compressed one
    decompresses within the size limit only: `Retrieval.refusal` checks that)."""
    stored = record.transfer_syntax_uid
    if stored in UNCOMPRESSED:
        return (stored, *(ts for ts in UNCOMPRESSED if ts != stored))
    if pixels.decodable(stored):
        return (stored, *UNCOMPRESSED)
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
    #: The audit participant objects of this retrieve: its studies and patient references.
    _objects: tuple[tuple[str, str], ...] = ()
    #: Largest decompressed pixel data `open` produces (`ServiceLimits`).
    max_decompressed_bytes: int = 1024**3
    tally: RetrieveTally = field(default_factory=RetrieveTally)
    finished: bool = False
    #: Why the last instance that `open` could not deliver could not be (for the answer).
    why_not: str | None = None

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
            self.why_not = _no_syntax(record)
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
        if stored not in UNCOMPRESSED and chosen in UNCOMPRESSED:
            return self._decompressed(record, chosen, part10=part10)
        if stored not in UNCOMPRESSED or chosen not in UNCOMPRESSED:
            return None  # the index said otherwise: the blob is not what was recorded
        try:
            layout = self.layout(record)
        except Exception:
            log.warning("stored instance could not be read for retrieve")
            return None

        def reopen() -> BinaryIO:
            return self._blobs.open(record.blob_key)

        pieces = pixels.converted_pieces(reopen, layout, chosen, part10=part10)
        return pixels.DecompressedReader(pieces, chosen)

    def _decompressed(
        self, record: InstanceRecord, target: str, *, part10: bool
    ) -> InstanceData | None:
        try:
            layout = self.layout(record)
            pixels.check_decodable(layout, self.max_decompressed_bytes)
        except pixels.CannotDecode as exc:
            self.why_not = exc.reason
            log.info("stored instance not decompressed for retrieve: %s", exc.reason)
            return None
        except Exception:
            log.warning("stored instance could not be read for retrieve")
            return None

        def reopen() -> BinaryIO:
            return self._blobs.open(record.blob_key)

        pieces = pixels.decompressed_pieces(reopen, layout, target, part10=part10)
        # The first frame decodes now, before the front end sends anything (a C-STORE
        # sub-operation cannot be taken back once begun): pixel data that does not decode at
        # all is a failed instance, not a broken association.
        try:
            first = next(pieces)
        except Exception as exc:
            pieces.close()
            self.why_not = "the compressed pixel data could not be decoded"
            log.warning("stored instance could not be decompressed: %s", type(exc).__name__)
            return None
        return pixels.DecompressedReader(pieces, target, first=first)

    def refusal(self, record: InstanceRecord, accepted: Collection[str]) -> str | None:
        """Why `record` cannot be had in any of `accepted` (None: it can), before anything is
        sent: no such conversion, or decompression over the size limit or without a decoder
        (the header is read for that). Blocking."""
        chosen = next((ts for ts in deliverable_syntaxes(record) if ts in accepted), None)
        stored = record.transfer_syntax_uid
        if chosen is None:
            return _no_syntax(record)
        if chosen == stored or stored in UNCOMPRESSED:
            return None
        try:
            pixels.check_decodable(self.layout(record), self.max_decompressed_bytes)
        except pixels.CannotDecode as exc:
            return exc.reason
        except Exception:
            return "the stored instance could not be read"
        return None

    def layout(self, record: InstanceRecord, *, inline_up_to: int = 0) -> pixels.Layout:
        """`record`'s data set without its pixel data value, and where that value lies
        (`pixels.read_layout`): the header and what follows the pixel data, never the pixel
        data itself (unless native and at most `inline_up_to` bytes). OSError, ValueError or
        pydicom's errors when it cannot be read. Blocking."""
        with self._blobs.open(record.blob_key) as stream:
            return pixels.read_layout(_seekable(stream), inline_up_to=inline_up_to)

    def frames(
        self, record: InstanceRecord, layout: pixels.Layout, numbers: list[int], *, decode: bool
    ) -> Iterator[bytes]:
        """Frames `numbers` (from 1) of `record`, each read when the iterator is advanced
        (blocking): byte ranges of native pixel data; of encapsulated data the frame as
        stored, or decoded with `decode` (the caller has checked `pixels.check_decodable`).
        The blob is open until the iterator ends or is closed."""
        with self._blobs.open(record.blob_key) as opened:
            stream = _seekable(opened)
            for number in numbers:
                if not layout.encapsulated:
                    yield pixels.native_frame(stream, layout, number)
                elif decode:
                    yield pixels.decode_frame(stream, layout, number)[0]
                else:
                    yield pixels.encapsulated_frame(stream, layout, number)

    def value(self, record: InstanceRecord, layout: pixels.Layout) -> Iterator[bytes]:
        """The native pixel data value of `record`, in chunks, from its byte range."""
        if layout.length is None:
            raise ValueError("encapsulated pixel data has no single value to send")
        with self._blobs.open(record.blob_key) as opened:
            yield from pixels.byte_range(_seekable(opened), layout.offset, layout.length)

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
                self._objects,
                tally.detail(),
            )
        )


def _no_syntax(record: InstanceRecord) -> str:
    stored = record.transfer_syntax_uid
    name = UID(stored).name or stored
    if stored in UNCOMPRESSED or pixels.decodable(stored):
        return f"stored as {name}: it converts to Explicit or Implicit VR Little Endian only"
    return f"stored as {name}, which this archive cannot decompress; it goes as stored only"


def _seekable(stream: BinaryIO) -> BinaryIO:
    """Blob streams of the folder store seek (a seek decrypts the chunk it lands in); any
    other is read into memory first."""
    if stream.seekable():
        return stream
    return BytesIO(stream.read())


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
        objects = self._retrieved_objects(records)
        if records:
            self._audit.emit(
                AuditEvent(
                    EventType.MOVE_REQUEST,
                    EventAction.READ,
                    EventOutcome.SUCCESS,
                    _retrieve_participants(principal, destination),
                    objects,
                    {"operation": action.value, "instances": len(records)},
                )
            )
        return Retrieval(
            principal,
            action,
            records,
            destination,
            self._blobs,
            self._audit,
            objects,
            self.limits.max_decompressed_bytes,
        )

    def _retrieved_objects(self, records: list[InstanceRecord]) -> tuple[tuple[str, str], ...]:
        """The studies and (as references, never in clear) the patients of `records`: PS3.15
        A.5.3.4 "DICOM Instances Transferred" names the patient, and an auditor looking for
        every access to one patient's data finds it by pseudonym (`pacsguard audit find`)."""
        studies = tuple(("study", s) for s in sorted({r.study_instance_uid for r in records}))
        return studies + self._patient_objects(r.patient_id for r in records)


def _retrieve_participants(
    principal: Principal, destination: str | None
) -> tuple[Participant, ...]:
    own = (_participant(principal),)
    return own + ((Participant(ae_title=destination, requestor=False),) if destination else ())
