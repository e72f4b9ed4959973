"""Ingest: the one path by which C-STORE (and STOW-RS) objects enter the archive.

Ingest is durable before it answers: the blob and its directory entry are fsync'd (at the same
time, `FolderBlobStore.put`), then the index row is committed and the audit line synced (at the
same time; concurrent stores share both: group commit in the index and in the audit log), and
only then does `store_instance` return success (and the front end acknowledge). When the blob
or the index row cannot be written for lack of room (a full disk) the answer is 0xA700, when the
index is unavailable otherwise (a lost database) 0x0110, and nothing is kept either way; the
archive logs one error when that starts and one warning when it ends.

Audit fails closed: the primary audit log's `AuditLogError` never becomes a success. A store
whose audit line cannot be made durable answers 0xA700 (out of resources). If the line could
not even be written, the index transaction rolls back and the blob goes; if it was written but
its sync failed, the instance stays stored (the log rewrites the line once the disk recovers,
see `AuditLog`) and a retry is an identical duplicate.

Duplicate SOP Instance UIDs: the same UID with byte-identical content is accepted again as a
success without change (a client retrying after a lost response must not see a failure); the
same UID with different content is refused with 0x0111 "Duplicate SOP Instance", keeping the
first copy. Corrections go through a new SOP Instance UID, as PS3.4 expects.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Final

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsguard.archive.audit.events import AuditEvent, EventAction, EventOutcome, EventType
from pacsguard.archive.audit.notify import Waiter, emit_deferred
from pacsguard.archive.blobs import BlobConflictError, BlobInfo
from pacsguard.archive.index import out_of_space
from pacsguard.archive.model import AddOutcome, HierarchyError, InstanceRecord, is_valid_uid
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service._core import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    ServiceCore,
    _participant,
    log,
)
from pacsguard.archive.staging import ObjectSource
from pacsguard.dicom.header import ESCAPE, PLAIN_CHARSETS, read_header
from pacsguard.errors import AuditLogError


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
    cheaper than pydicom's per-element conversion and validation, for the common charsets
    (`PLAIN_CHARSETS`). Any other Specific Character Set (ISO 2022 code extensions such as
    ISO 2022 IR 87, other single-byte sets, GB18030...) and any value holding an escape
    sequence are decoded by pydicom (`pydicom.charset`), into the same Unicode text."""
    try:
        raw = ds.get_item(tag_for_keyword(keyword) or 0)
        if raw is None:
            return ""
        value = raw.value
        if isinstance(value, bytes | bytearray) and ESCAPE not in value:
            charset = _charset(ds)
            if charset is not None:
                return bytes(value).decode(charset, "replace").strip(" \x00")
        converted = ds.get(keyword)
    except Exception:
        return ""
    if converted is None:
        return ""
    if isinstance(converted, MultiValue | list | tuple):  # as stored: values joined by "\\"
        return "\\".join(str(v) for v in converted).strip()
    return str(converted).strip()


def _charset(ds: Dataset) -> str | None:
    """The Python codec for `ds`'s text when it is one of `PLAIN_CHARSETS`, else None."""
    raw = ds.get_item(0x00080005)
    if raw is None:
        return PLAIN_CHARSETS[""]
    value = raw.value
    text = (
        bytes(value).decode("ascii", "replace")
        if isinstance(value, bytes | bytearray)
        else ("\\".join(value) if isinstance(value, list | MultiValue) else str(value or ""))
    )
    return PLAIN_CHARSETS.get(text.strip(" \x00"))


#: An object to store: Part 10 bytes, a Part 10 file, or one staged by a front end.
Source = Path | bytes | ObjectSource


def _reader(source: Source) -> BinaryIO:
    if isinstance(source, bytes):
        return BytesIO(source)
    return source.open("rb") if isinstance(source, Path) else source.open()


def _size(source: Source) -> int:
    if isinstance(source, bytes):
        return len(source)
    return source.stat().st_size if isinstance(source, Path) else source.size


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


class Ingest(ServiceCore):
    """Store: one ingest path for C-STORE and STOW-RS (durable before it answers)."""

    # -- ingest --------------------------------------------------------------------------------
    def _store_audit(
        self,
        principal: Principal,
        outcome: EventOutcome,
        result: str,
        record: InstanceRecord | None,
    ) -> AuditEvent:
        objects: tuple[tuple[str, str], ...] = ()
        if record is not None:
            objects = (
                ("study", record.study_instance_uid),
                *self._patient_objects((record.patient_id,)),
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
        source: Source,
        *,
        affected_sop_class_uid: str | None = None,
        affected_sop_instance_uid: str | None = None,
    ) -> StoreResult:
        """Validate and durably store one DICOM Part 10 object, given as bytes, a file, or a
        staged object; never raises for bad input. 0xA700 when its audit line cannot be made
        durable."""
        self.require(principal, Action.STORE)
        try:
            return self._store(principal, source, affected_sop_class_uid, affected_sop_instance_uid)
        except AuditLogError:
            return StoreResult(OUT_OF_RESOURCES, "audit log unavailable")

    def _store(
        self,
        principal: Principal,
        source: Source,
        affected_sop_class_uid: str | None,
        affected_sop_instance_uid: str | None,
    ) -> StoreResult:
        try:
            size = _size(source)
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
        self, principal: Principal, source: Source, record: InstanceRecord
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
        except OSError as error:
            self._blob_writes.failed(error)
            return self._refuse(principal, OUT_OF_RESOURCES, "storage write failed")
        self._blob_writes.worked()
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
        except AuditLogError:  # the line could not be written: the row rolled back
            self._drop_unindexed_blob(info.key, fresh=fresh)
            raise
        except Exception as error:  # a full disk, a lost database: never acknowledged
            # No blob stays behind, and the failure is audited (after the success line, if that
            # was written); the index's failure is the answer even when the log fails too.
            self._drop_unindexed_blob(info.key, fresh=fresh)
            with contextlib.suppress(AuditLogError):
                if audit_synced:
                    audit_synced[0]()
                self._store_event(
                    principal, EventOutcome.SERIOUS_FAILURE, "index commit failed", stored
                )
            self._index_writes.failed(error)
            if out_of_space(error):
                return StoreResult(OUT_OF_RESOURCES, "index commit failed")
            return StoreResult(PROCESSING_FAILURE, "index unavailable; not stored, retry later")
        self._index_writes.worked()
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

    def _put_blob(self, key: str, source: Source) -> BlobInfo:
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
