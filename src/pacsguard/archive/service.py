"""The archive service: the one place where store, query and retrieve happen.

Front ends (DIMSE today, DICOMweb later) translate protocol requests into these calls and the
results back into protocol answers; they hold no archive logic. Every call names the Principal,
is authorized here, and becomes an audit event whatever its outcome.

Ingest is durable before it answers: the blob is fsync'd and renamed, then the index row is
committed, and only then does `store_instance` return success (and the front end acknowledge).

Duplicate SOP Instance UIDs: the same UID with byte-identical content is accepted again as a
success without change (a client retrying after a lost response must not see a failure); the
same UID with different content is refused with 0x0111 "Duplicate SOP Instance", keeping the
first copy. Corrections go through a new SOP Instance UID, as PS3.4 expects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Final

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.notify import Waiter, emit_deferred
from pacsguard.archive.blobs import BlobConflictError, BlobInfo, BlobStore
from pacsguard.archive.index import IndexStore
from pacsguard.archive.model import (
    AddOutcome,
    HierarchyError,
    InstanceRecord,
    QueryRequest,
    is_valid_uid,
)
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.dicom.header import PLAIN_CHARSETS, read_header
from pacsguard.dicom.levels import Level

log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4.2): the front end passes them through.
SUCCESS: Final = 0x0000
DUPLICATE_SOP_INSTANCE: Final = 0x0111
NOT_AUTHORIZED: Final = 0x0124
#: General "processing failure" (PS3.7 C.4.2): the index could not record the instance.
PROCESSING_FAILURE: Final = 0x0110
OUT_OF_RESOURCES: Final = 0xA700
DATASET_MISMATCH: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000

Authorizer = Callable[[Principal, Action], None]


class Denied(Exception):
    """The policy refused the action; already audited. `status` is the DICOM status to send."""

    def __init__(self, action: Action, principal: Principal) -> None:
        super().__init__(f"{principal.ae_title} may not {action.value}")
        self.status = NOT_AUTHORIZED


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    max_object_bytes: int = 4 * 1024**3
    max_query_results: int = 1000


@dataclass(frozen=True, slots=True)
class StoreResult:
    status: int
    outcome: str
    sop_instance_uid: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


def _text(ds: Dataset, keyword: str) -> str:
    """A text value as stored, stripped; "" when absent or undecodable.

    Ingest reads ~20 attributes per instance: decoding the raw bytes directly is ten times
    cheaper than pydicom's per-element conversion and validation, for the common charsets."""
    try:
        raw = ds.get_item(tag_for_keyword(keyword) or 0)
        if raw is None:
            return ""
        value = raw.value
        if isinstance(value, bytes | bytearray):
            charset = _charset(ds)
            if charset is not None:
                return bytes(value).decode(charset, "replace").strip(" \x00")
        converted = ds.get(keyword)
    except Exception:
        return ""
    return "" if converted is None else str(converted).strip()


def _charset(ds: Dataset) -> str | None:
    raw = ds.get_item(0x00080005)
    if raw is None:
        return "ascii"
    value = raw.value
    text = (
        bytes(value).decode("ascii", "replace")
        if isinstance(value, bytes | bytearray)
        else ("\\".join(value) if isinstance(value, list) else str(value or ""))
    )
    return PLAIN_CHARSETS.get(text.strip(" \x00"))


def _reader(source: Path | bytes) -> BinaryIO:
    return BytesIO(source) if isinstance(source, bytes) else source.open("rb")


#: The attributes ingest reads from each object: the hierarchy's UIDs and what C-FIND matches on.
INDEXED_KEYWORDS: Final = (
    "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
    "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
    "StudyDescription", "AccessionNumber", "ReferringPhysicianName", "Modality", "SeriesNumber",
    "SeriesDescription", "InstanceNumber",
)  # fmt: skip


def _header_by_pydicom(ds: Dataset) -> dict[str, str]:
    values = {k: _text(ds, k) for k in INDEXED_KEYWORDS}
    meta = getattr(ds, "file_meta", None)
    values["TransferSyntaxUID"] = _text(meta, "TransferSyntaxUID") if meta is not None else ""
    return values


def _record_from(values: dict[str, str]) -> InstanceRecord | None:
    uids = ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID")
    if not all(is_valid_uid(values[k]) for k in uids):
        return None
    return InstanceRecord(
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        patient_id=values["PatientID"],
        patient_name=values["PatientName"],
        patient_birth_date=values["PatientBirthDate"],
        patient_sex=values["PatientSex"],
        study_date=values["StudyDate"],
        study_time=values["StudyTime"],
        study_id=values["StudyID"],
        study_description=values["StudyDescription"],
        accession_number=values["AccessionNumber"],
        referring_physician_name=values["ReferringPhysicianName"],
        modality=values["Modality"],
        series_number=values["SeriesNumber"],
        series_description=values["SeriesDescription"],
        instance_number=values["InstanceNumber"],
        transfer_syntax_uid=values["TransferSyntaxUID"],
    )


def _participant(principal: Principal) -> Participant:
    return Participant(
        ae_title=principal.ae_title, address=principal.address, user=principal.username
    )


class ArchiveService:
    """Store / query / retrieve over an index and a blob store, authorized and audited."""

    def __init__(
        self,
        index: IndexStore,
        blobs: BlobStore,
        audit: AuditSink,
        authorize: Authorizer,
        limits: ServiceLimits | None = None,
    ) -> None:
        self._index = index
        self._blobs = blobs
        self._audit = audit
        self._authorize = authorize
        self.limits = limits or ServiceLimits()
        self._locks = tuple(threading.Lock() for _ in range(64))

    # -- policy ------------------------------------------------------------------------------
    def require(self, principal: Principal, action: Action) -> None:
        """Authorize or audit the denial and raise Denied."""
        try:
            self._authorize(principal, action)
        except Exception:
            self._audit.emit(
                AuditEvent(
                    EventType.POLICY_DENIAL,
                    EventAction.EXECUTE,
                    EventOutcome.SERIOUS_FAILURE,
                    (_participant(principal),),
                    detail={"action": action.value},
                )
            )
            raise Denied(action, principal) from None

    # -- ingest --------------------------------------------------------------------------------
    @staticmethod
    def _store_audit(
        principal: Principal,
        outcome: EventOutcome,
        result: str,
        record: InstanceRecord | None,
    ) -> AuditEvent:
        objects: tuple[tuple[str, str], ...] = ()
        if record is not None:
            objects = (
                ("study", record.study_instance_uid),
                ("patient", record.patient_id),
                ("instance", record.sop_instance_uid),
            )
        return AuditEvent(
            EventType.STORE,
            EventAction.CREATE,
            outcome,
            (_participant(principal),),
            objects,
            {"result": result},
        )

    def _store_event(
        self,
        principal: Principal,
        outcome: EventOutcome,
        result: str,
        record: InstanceRecord | None,
    ) -> None:
        self._audit.emit(self._store_audit(principal, outcome, result, record))

    def _refuse(self, principal: Principal, status: int, outcome: str) -> StoreResult:
        self._store_event(principal, EventOutcome.MINOR_FAILURE, outcome, None)
        return StoreResult(status, outcome)

    def store_instance(
        self,
        principal: Principal,
        source: Path | bytes,
        *,
        affected_sop_class_uid: str | None = None,
        affected_sop_instance_uid: str | None = None,
    ) -> StoreResult:
        """Validate and durably store one DICOM Part 10 object, given as a file or as bytes;
        never raises for bad input."""
        self.require(principal, Action.STORE)
        try:
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
        except OSError:
            return self._refuse(principal, OUT_OF_RESOURCES, "received data missing")
        if size > self.limits.max_object_bytes:
            return self._refuse(principal, OUT_OF_RESOURCES, "object larger than allowed")
        values = read_header(source, INDEXED_KEYWORDS) if isinstance(source, bytes) else None
        if values is None:  # a large object, or one the fast reader leaves to pydicom
            try:
                with _reader(source) as stream:
                    values = _header_by_pydicom(dcmread(stream, stop_before_pixels=True))
            except Exception:
                return self._refuse(principal, CANNOT_UNDERSTAND, "undecodable data set")
        record = _record_from(values)
        if record is None:
            return self._refuse(principal, CANNOT_UNDERSTAND, "missing or invalid UIDs")
        if affected_sop_instance_uid is not None and (
            affected_sop_instance_uid != record.sop_instance_uid
        ):
            return self._refuse(principal, DATASET_MISMATCH, "SOP Instance UID differs")
        if affected_sop_class_uid is not None and affected_sop_class_uid != record.sop_class_uid:
            return self._refuse(principal, DATASET_MISMATCH, "SOP Class UID differs")
        # One SOP Instance UID is stored by one association at a time: the check, the blob write
        # and the index row happen under a lock striped by UID.
        with self._locks[hash(record.sop_instance_uid) % len(self._locks)]:
            return self._store_new(principal, source, record)

    def _store_new(
        self, principal: Principal, source: Path | bytes, record: InstanceRecord
    ) -> StoreResult:
        # The blob store never replaces a blob: identical bytes return the stored copy, other
        # bytes raise BlobConflictError. So the common case (a new instance) costs no lookup.
        key = record.sop_instance_uid
        fresh = not self._blobs.exists(key)  # one stat: tells our blob from an earlier one
        try:
            info = self._put_blob(key, source)
        except BlobConflictError:
            self._store_event(principal, EventOutcome.MINOR_FAILURE, "duplicate-conflict", record)
            return StoreResult(DUPLICATE_SOP_INSTANCE, "duplicate-conflict")
        except OSError:
            log.exception("blob store write failed")
            return self._refuse(principal, OUT_OF_RESOURCES, "storage write failed")
        stored = InstanceRecord(
            **{
                **{f: getattr(record, f) for f in record.__dataclass_fields__},
                "blob_key": info.key,
                "size": info.size,
                "sha256": info.sha256,
            }
        )
        # The audit line of a new instance is written once its index row is, and synced while
        # the index commits: the two syncs overlap instead of following each other.
        audit_synced: list[Waiter] = []

        def before_commit(outcome: AddOutcome) -> None:
            if not audit_synced:  # a retried write calls again: still one event
                event = self._store_audit(principal, EventOutcome.SUCCESS, outcome.value, stored)
                audit_synced.append(emit_deferred(self._audit, event))

        try:
            outcome = self._index.add(stored, before_commit=before_commit)
        except HierarchyError:
            # Its series belongs to another study (or its study to another patient): refuse,
            # and take back the blob no index row points to.
            self._blobs.delete(info.key)
            return self._refuse(principal, CANNOT_UNDERSTAND, "UIDs contradict stored hierarchy")
        except Exception as exc:
            # The index is down, full or refused the write: nothing is acknowledged, no blob
            # stays behind, and the failure is audited (after the success line, if written).
            log.error("index write failed: %s", exc.__class__.__name__)
            self._drop_unindexed_blob(info.key, fresh=fresh)
            if audit_synced:
                audit_synced[0]()
            self._store_event(
                principal, EventOutcome.SERIOUS_FAILURE, "index commit failed", stored
            )
            return StoreResult(PROCESSING_FAILURE, "index unavailable; not stored, retry later")
        if outcome is AddOutcome.DUPLICATE_CONFLICT:  # indexed under other bytes
            self._store_event(principal, EventOutcome.MINOR_FAILURE, "duplicate-conflict", stored)
            return StoreResult(DUPLICATE_SOP_INSTANCE, "duplicate-conflict")
        if audit_synced:
            audit_synced[0]()
        else:  # an identical duplicate: nothing was written, so nothing overlapped
            self._store_event(principal, EventOutcome.SUCCESS, outcome.value, stored)
        return StoreResult(SUCCESS, outcome.value, record.sop_instance_uid)

    def _drop_unindexed_blob(self, key: str, *, fresh: bool) -> None:
        """Remove a blob just written whose index row did not commit (never acknowledged), so
        that it is not left as an orphan; a blob the index does point to stays. When the index
        cannot say (it is down), a blob this store call created (`fresh`) goes, one that was
        there before stays."""
        try:
            indexed = self._index.stored_copy(key) is not None
        except Exception:
            indexed = not fresh
        if indexed:
            return
        try:
            self._blobs.delete(key)
        except Exception as exc:
            log.error(
                "could not remove an unacknowledged blob (%s); fsck will list it as an orphan",
                exc.__class__.__name__,
            )

    def _put_blob(self, key: str, source: Path | bytes) -> BlobInfo:
        """Durably write the blob. A blob with other bytes that no index row points to can only
        be left by a crash between blob and index (never acknowledged): replace it. One that is
        indexed is a real duplicate: BlobConflictError."""
        try:
            with _reader(source) as stream:
                return self._blobs.put(key, stream)
        except BlobConflictError:
            if self._index.stored_copy(key) is not None:
                raise
            self._blobs.delete(key)
            with _reader(source) as stream:
                return self._blobs.put(key, stream)

    # -- query ---------------------------------------------------------------------------------
    def query(
        self, principal: Principal, request: QueryRequest
    ) -> Generator[dict[str, str], None, bool]:
        """Matches for a C-FIND / QIDO-RS query, capped by configuration; audited with count.
        Returns (as the generator's value) True when more matches exist than were yielded: the
        answer is incomplete, and the front end must say so."""
        self.require(principal, Action.FIND)
        limit = min(request.limit, self.limits.max_query_results)
        capped = QueryRequest(
            root=request.root,
            level=request.level,
            keys=request.keys,
            limit=limit + 1,  # one more than we return: tells a complete answer from a cut one
        )
        count = 0
        truncated = False
        outcome = EventOutcome.SUCCESS
        try:
            for result in self._index.find(capped):
                if count == limit:
                    truncated = True
                    break
                count += 1
                yield result
            return truncated
        except GeneratorExit:
            outcome = EventOutcome.MINOR_FAILURE  # cancelled or connection lost mid-answer
            raise
        except Exception:
            outcome = EventOutcome.SERIOUS_FAILURE
            raise
        finally:
            self._audit.emit(
                AuditEvent(
                    EventType.QUERY,
                    EventAction.EXECUTE,
                    outcome,
                    (_participant(principal),),
                    (("query", f"{request.root.value}/{request.level.name}"),),
                    {"results": count, "capped": truncated},
                )
            )

    # -- retrieve ------------------------------------------------------------------------------
    def instances_to_retrieve(
        self, principal: Principal, action: Action, level: Level, uids: list[str]
    ) -> list[InstanceRecord]:
        """The instances a C-GET / C-MOVE asks for (unique keys at `level`), authorized. An
        index failure is audited (nothing was retrieved) and raised."""
        self.require(principal, action)
        found: dict[str, InstanceRecord] = {}
        try:
            for uid in uids:
                for record in self._index.instances(level, uid):
                    found[record.sop_instance_uid] = record
        except Exception:
            self._audit.emit(
                AuditEvent(
                    EventType.RETRIEVE,
                    EventAction.READ,
                    EventOutcome.SERIOUS_FAILURE,
                    (_participant(principal),),
                    detail={"action": action.value, "result": "index unavailable"},
                )
            )
            raise
        return list(found.values())

    def open_instance(self, record: InstanceRecord) -> BinaryIO:
        return self._blobs.open(record.blob_key)

    def audit_retrieve(
        self,
        principal: Principal,
        records: list[InstanceRecord],
        *,
        destination: str | None,
        sent: int,
        failed: int,
        not_sent: int = 0,
        cancelled: bool = False,
    ) -> None:
        """A C-GET / C-MOVE: instances sent, failed, and not sent (cancelled before them)."""
        studies = sorted({r.study_instance_uid for r in records})
        detail: dict[str, str | int | bool] = {"sent": sent, "failed": failed}
        if not_sent or cancelled:
            detail.update(not_sent=not_sent, cancelled=cancelled)
        complete = failed == 0 and not_sent == 0 and not cancelled
        self._audit.emit(
            AuditEvent(
                EventType.RETRIEVE,
                EventAction.READ,
                EventOutcome.SUCCESS if complete else EventOutcome.MINOR_FAILURE,
                (_participant(principal),)
                + ((Participant(ae_title=destination, requestor=False),) if destination else ()),
                tuple(("study", s) for s in studies),
                detail,
            )
        )
