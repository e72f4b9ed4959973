"""STOW-RS (PS3.18 10.5): ``multipart/related; type="application/dicom"`` through the one
ingest path (`ArchiveService.store_instance`, as C-STORE), each instance durable before 200.

The body is parsed as it streams in, by python-multipart's `MultipartParser` (the parser
Starlette itself uses), with its header count and size bounds. Nothing is stored until the
whole body has arrived and parsed: a body that passes `[dicomweb] max_body_bytes` (checked on
Content-Length first, then byte by byte while it streams), stalls longer than
`body_timeout_s`, is malformed or ends early is refused with nothing stored. Parts stay in
memory up to `_IN_MEMORY` bytes; larger ones go to the archive's staging area (encrypted,
unnamed files: `archive.staging`), never to the system temp folder.

A request keeps at most `_MEMORY_BUDGET` in memory whatever its parts' sizes.

Each part then goes to `store_instance`; the answer lists what was stored
(ReferencedSOPSequence) and what was not (FailedSOPSequence with the DICOM status as
FailureReason). 200 when every instance was stored, 202 when some were, 409 when none was
(PS3.18 Table 10.5.3-1).
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
from pydicom import dcmread
from pydicom.dataset import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from pacsguard.archive.model import is_valid_uid
from pacsguard.archive.security.principal import Principal
from pacsguard.archive.service import SUCCESS, ArchiveService, StoreResult
from pacsguard.archive.staging import StagedObject, StagedWriter
from pacsguard.archive.web._errors import WebError
from pacsguard.archive.web._media import parse_media_type
from pacsguard.dicom.header import read_header

if TYPE_CHECKING:  # a TypedDict the library declares for type checkers only
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

#: A part larger than this is staged (encrypted) instead of kept in memory...
_IN_MEMORY: Final = 1024 * 1024
#: ...and so is every part once a request holds this much in memory.
_MEMORY_BUDGET: Final = 16 * 1024 * 1024
CANNOT_UNDERSTAND: Final = 0xC000
#: PS3.18 10.5.3: the instance belongs to another study than the request's URL names.
STUDY_MISMATCH: Final = 0xA900
_TYPE: Final = "application/dicom"
#: The longest multipart boundary taken (RFC 2046 says 70; real clients send a few more).
_MAX_BOUNDARY: Final = 200


def check_request_type(content_type: str | None) -> bytes:
    """The boundary of a STOW-RS body; WebError 415/400 for any other Content-Type."""
    if not content_type:
        raise WebError(415, 'Content-Type required: multipart/related; type="application/dicom"')
    media = parse_media_type(content_type)
    if media.type != "multipart/related":
        raise WebError(
            415,
            f"Content-Type {media.type[:64]} is not supported; send "
            'multipart/related; type="application/dicom"',
        )
    part_type = media.params.get("type", "").lower()
    if part_type != _TYPE:
        raise WebError(
            415,
            f'multipart/related type="{part_type[:64]}" is not supported; this archive '
            'accepts type="application/dicom" (DICOM PS3.10 files) only',
        )
    boundary = media.params.get("boundary", "")
    # RFC 2046 allows 1-70 characters; Orthanc's DICOMweb plugin sends 73 (two UUIDs), so a
    # longer one is taken as long as it stays bounded.
    if not 1 <= len(boundary) <= _MAX_BOUNDARY:
        raise WebError(
            400, f"Content-Type has no usable boundary parameter (1-{_MAX_BOUNDARY} characters)"
        )
    return boundary.encode("latin-1", errors="replace")


@dataclass
class _Part:
    """One received part: its Content-Type and its bytes (in memory, or staged)."""

    content_type: str = ""
    memory: bytearray = field(default_factory=bytearray)
    writer: StagedWriter | None = None
    staged: StagedObject | None = None

    def source(self) -> bytes | StagedObject:
        return self.staged if self.staged is not None else bytes(self.memory)

    def discard(self) -> None:
        if self.writer is not None and self.staged is None:
            self.writer.discard()
        if self.staged is not None:
            self.staged.discard()


class _Collector:
    """MultipartParser callbacks: collects parts, staging the large ones."""

    def __init__(self, service: ArchiveService) -> None:
        self.parts: list[_Part] = []
        self.ended = False
        self.in_memory = 0
        self._service = service
        self._field = bytearray()
        self._value = bytearray()
        self.parser: MultipartParser | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self.parts.append(_Part())

    def _header_end(self) -> None:
        if bytes(self._field).strip().lower() == b"content-type":
            self.parts[-1].content_type = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        chunk = data[start:end]
        if part.writer is not None:
            part.writer.write(chunk)
            return
        part.memory.extend(chunk)
        self.in_memory += len(chunk)
        staging = self._service.staging
        too_much = len(part.memory) > _IN_MEMORY or self.in_memory > _MEMORY_BUDGET
        if too_much and staging is not None:
            part.writer = staging.create()
            part.writer.write(part.memory)
            self.in_memory -= len(part.memory)
            part.memory = bytearray()

    def _part_end(self) -> None:
        part = self.parts[-1]
        if part.writer is not None:
            part.staged = part.writer.finish()

    def _end(self) -> None:
        self.ended = True

    def may_stage(self, incoming: int) -> bool:
        """Whether parsing `incoming` more bytes may write to the staging area: a part being
        staged, or one that these bytes could push past the in-memory bounds."""
        if self._service.staging is None:
            return False
        if not self.parts:
            return incoming > _IN_MEMORY
        part = self.parts[-1]
        return (
            part.writer is not None
            or len(part.memory) + incoming > _IN_MEMORY
            or self.in_memory + incoming > _MEMORY_BUDGET
        )

    def discard(self) -> None:
        for part in self.parts:
            part.discard()


async def receive_parts(
    service: ArchiveService,
    boundary: bytes,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    chunk_timeout_s: float,
    blocking: Callable[[Callable[[], object]], Awaitable[object]],
) -> list[_Part]:
    """Parse a whole STOW-RS body; WebError (400, 408, 413) with nothing kept otherwise."""
    collector = _Collector(service)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        while True:
            try:
                with anyio.fail_after(chunk_timeout_s):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise WebError(408, f"no request data for {chunk_timeout_s:g} s") from None
            received += len(chunk)
            if received > max_bytes:
                raise WebError(
                    413, f"request body larger than the {max_bytes} bytes this archive accepts"
                )
            try:
                if collector.may_stage(len(chunk)):
                    # parsing stages large parts (encrypting, writing): off the loop
                    await blocking(partial(parser.write, chunk))
                else:  # in memory only: cheaper here than a hop to the pool and back
                    parser.write(chunk)
            except MultipartParseError as exc:
                raise WebError(400, f"malformed multipart body: {exc}") from None
        parser.finalize()
        if not collector.ended:
            raise WebError(400, "multipart body ends before its closing boundary")
        if not collector.parts:
            raise WebError(400, "multipart body has no parts")
    except BaseException:
        collector.discard()
        raise
    return collector.parts


@dataclass(frozen=True, slots=True)
class _Outcome:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    status: int


_UIDS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


def _identify(source: bytes | StagedObject) -> tuple[str, str, str, str] | None:
    """(study, series, SOP class, SOP instance UIDs) of a part, or None when it is not
    DICOM. Parts in memory are read by ingest's header reader (`read_header`, which checks
    the structure as pydicom would) when it can, else by pydicom."""
    if isinstance(source, bytes):
        found = read_header(source, _UIDS)
        if found is not None:
            return (found[_UIDS[0]], found[_UIDS[1]], found[_UIDS[2]], found[_UIDS[3]])
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else source.open()
        with stream:
            ds = dcmread(
                stream,
                stop_before_pixels=True,
                specific_tags=[
                    "StudyInstanceUID",
                    "SeriesInstanceUID",
                    "SOPClassUID",
                    "SOPInstanceUID",
                ],
            )
        values = (
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SOPClassUID", "")),
            str(ds.get("SOPInstanceUID", "")),
        )
    except Exception:
        return None
    return values


def store_parts(
    service: ArchiveService, principal: Principal, parts: list[_Part], study: str | None
) -> list[_Outcome]:
    """Each part through `store_instance`, in order. Blocking; the parts are discarded."""
    outcomes: list[_Outcome] = []
    try:
        for part in parts:
            media = parse_media_type(part.content_type or _TYPE)
            source = part.source()
            found = _identify(source) if media.type == _TYPE else None
            if found is None:
                outcomes.append(_Outcome("", "", "", "", CANNOT_UNDERSTAND))
                continue
            if study is not None and found[0] != study:
                outcomes.append(_Outcome(*found, STUDY_MISMATCH))
                continue
            result: StoreResult = service.store_instance(principal, source)
            outcomes.append(_Outcome(*found, result.status))
    finally:
        for part in parts:
            part.discard()
    return outcomes


def stow_answer(outcomes: list[_Outcome], base_url: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, DICOM JSON body) of a STOW-RS answer (PS3.18 10.5.3)."""
    answer = Dataset()
    stored, failed = [], []
    for outcome in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = _uid(outcome.sop_class_uid)
        item.ReferencedSOPInstanceUID = _uid(outcome.sop_instance_uid)
        if outcome.status == SUCCESS:
            item.RetrieveURL = (
                f"{base_url}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                f"/instances/{outcome.sop_instance_uid}"
            )
            stored.append(item)
        else:
            item.FailureReason = outcome.status
            failed.append(item)
    studies = {o.study_uid for o in outcomes if o.status == SUCCESS}
    if len(studies) == 1:
        answer.RetrieveURL = f"{base_url}/studies/{studies.pop()}"
    if stored:
        answer.ReferencedSOPSequence = stored
    if failed:
        answer.FailedSOPSequence = failed
    status = 200 if not failed else 409 if not stored else 202
    body: dict[str, Any] = answer.to_json_dict()
    return status, body


def _uid(value: str) -> str:
    """A UID from a received object as it may go into our answer (or empty)."""
    return value if is_valid_uid(value) else ""
