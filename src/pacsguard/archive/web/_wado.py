"""WADO-RS (PS3.18 10.4): instances as ``multipart/related; type="application/dicom"``,
metadata as DICOM JSON, frames and bulk data of uncompressed pixel data as
``multipart/related; type="application/octet-stream"``.

Every retrieve is the service's (`ArchiveService.retrieve`: authorize the `get` permission,
choose the instances, write the `move-request` line before anything is read); the instances
are read through its `Retrieval` in a transfer syntax the client accepts, counted on its tally,
and `Retrieval.finish` writes the closing line however the answer ended (`DrivenStream`).

Transfer syntax of ``application/dicom`` parts (PS3.18 8.7.3.5): with ``transfer-syntax=*``
each instance goes as stored, byte for byte; with a named one, in that one (the service
converts between Explicit and Implicit VR Little Endian; 406 before anything is sent when
some instance cannot be had in it); without the parameter, Explicit VR Little Endian (the
default PS3.18 names) for uncompressed instances and compressed ones as stored (there is no
codec to decompress them). Each part's Content-Type names its transfer syntax. Instances are
read in pieces of up to PIECE bytes, one being sent while the next is read: two pieces of a
request at a time are in memory; metadata and frames read one instance at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pacsguard.archive.model import InstanceRecord
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import (
    UNCOMPRESSED,
    InstanceData,
    Retrieval,
    deliverable_syntaxes,
)
from pacsguard.archive.web._context import WebContext
from pacsguard.archive.web._errors import WebError
from pacsguard.archive.web._media import MediaRange, wants, wants_multipart
from pacsguard.archive.web._stream import DrivenStream
from pacsguard.dicom import uids
from pacsguard.dicom.levels import Level
from pacsguard.errors import AuditLogError

log = logging.getLogger(__name__)

#: Bytes of one instance read (and decrypted) per thread-pool hop, and written at once.
PIECE: Final = 2 * 1024 * 1024
#: Instance bytes shorter than this are joined with the part headers around them.
_SMALL: Final = 64 * 1024
DICOM: Final = "application/dicom"
OCTETS: Final = "application/octet-stream"
DICOM_JSON: Final = "application/dicom+json"
#: Values longer than this become BulkDataURIs in metadata (PS3.18 F.2.6).
BULK_THRESHOLD: Final = 1024
EXPLICIT_LE: Final = str(uids.EXPLICIT_VR_LITTLE_ENDIAN)

Syntaxes = Callable[[InstanceRecord], Collection[str]]


async def locate(
    ctx: WebContext,
    principal: Principal,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Retrieval:
    """The retrieve a WADO-RS path names, authorized and announced in the audit trail
    (Denied, AuditLogError pass through); WebError(404), its trail closed, when the path
    names nothing stored (or a series or instance of another study)."""
    level, uid = (
        (Level.IMAGE, instance)
        if instance is not None
        else (Level.SERIES, series)
        if series is not None
        else (Level.STUDY, study)
    )
    retrieval = await ctx.blocking(
        partial(ctx.service.retrieve, principal, Action.GET, level, [uid])
    )
    # UIDs are hierarchical in the index: a series or instance is in the path's study (and
    # series) entirely or not at all.
    inside = all(
        r.study_instance_uid == study and series in (None, r.series_instance_uid)
        for r in retrieval.records
    )
    if not retrieval.records or not inside:
        if retrieval.records:  # announced, then nothing sent: the trail still closes
            await finish(ctx, retrieval)
        raise WebError(404, f"no {level.name.lower()} {uid} in this archive", audit=False)
    return retrieval


async def finish(ctx: WebContext, retrieval: Retrieval) -> None:
    try:
        await ctx.blocking(retrieval.finish)
    except AuditLogError:
        log.error("the end of a DICOMweb retrieve could not be audited (the audit log says why)")


def syntaxes_for(accept: MediaRange) -> Syntaxes:
    """Which transfer syntaxes each instance may be sent in, by the Accept range chosen."""
    wanted = accept.params.get("transfer-syntax", "").strip()
    if wanted == "*":
        return deliverable_syntaxes
    if wanted:
        return lambda record: (wanted,)
    return lambda record: (
        (EXPLICIT_LE,)
        if record.transfer_syntax_uid in UNCOMPRESSED
        else (record.transfer_syntax_uid,)
    )


async def check_deliverable(ctx: WebContext, retrieval: Retrieval, syntaxes: Syntaxes) -> None:
    """406 (the trail closed, nothing sent) when some instance cannot be had as asked."""
    other = [r for r in retrieval.records if not set(syntaxes(r)) & set(deliverable_syntaxes(r))]
    if other:
        await finish(ctx, retrieval)
        raise WebError(
            406,
            f"{len(other)} of the {len(retrieval.records)} instances cannot be sent in the "
            f"transfer syntax asked for (this one is stored as {other[0].transfer_syntax_uid}; "
            "only Explicit and Implicit VR Little Endian convert); ask for transfer-syntax=*",
        )


@dataclass(frozen=True, slots=True)
class _Piece:
    """Bytes of the multipart body (to be written in order), how many instances' parts begin
    and end in them, and whether the next instance could not be read (after these)."""

    data: list[bytes]
    begins: int = 0
    ends: int = 0
    unreadable: bool = False


def _part_header(boundary: str, transfer_syntax: str) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={transfer_syntax}\r\n\r\n"
    ).encode("ascii")


def _closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


class _Parts:
    """The multipart body of an instances answer, read one piece at a time (blocking).

    A piece holds up to about PIECE bytes: whole parts (header, instance, closing line) of as
    many instances as fit, a larger instance in PIECE-sized slices. One thread-pool hop per
    piece (the 1 MiB reads it replaced cost four hops and five writes for each 512 KiB
    image), and the instances' bytes are written as read, not copied into one buffer."""

    def __init__(self, retrieval: Retrieval, syntaxes: Syntaxes, boundary: str) -> None:
        self._retrieval = retrieval
        self._syntaxes = syntaxes
        self._boundary = boundary
        self._records = iter(retrieval.records)
        self._data: InstanceData | None = None
        self._ended = False

    def next(self) -> _Piece | None:
        """The next piece; None after the closing boundary."""
        if self._ended:
            return None
        out: list[bytes] = []
        small = b""  # part headers and closing lines, written with the next instance bytes
        size = begins = ends = 0
        while size < PIECE:
            if self._data is None:
                record = next(self._records, None)
                if record is None:
                    small += _closing(self._boundary)
                    self._ended = True
                    break
                data = self._retrieval.open(record, self._syntaxes(record), part10=True)
                if data is None:  # unreadable: counted, and the answer is cut (never a gap)
                    self._ended = True
                    return _Piece([*out, small] if small else out, begins, ends, unreadable=True)
                self._data = data
                begins += 1
                small += _part_header(self._boundary, data.transfer_syntax)
            want = PIECE - size
            try:
                body = self._data.read(want)  # short only at the end (buffered, in memory)
            except BaseException:
                self.close()
                raise
            size += len(body)
            if len(body) < _SMALL:
                small += body
            else:
                out += [small, body] if small else [body]
                small = b""
            if len(body) < want:
                self.close()
                small += b"\r\n"
                ends += 1
        if small:
            out.append(small)
        return _Piece(out, begins, ends)

    def close(self) -> None:
        data, self._data = self._data, None
        if data is not None:
            data.close()


def _content_length(retrieval: Retrieval, syntaxes: Syntaxes, boundary: str) -> int | None:
    """The body's length when every instance goes as stored (the index has their sizes);
    None when some are converted (then the body is chunked)."""
    total = len(_closing(boundary))
    for record in retrieval.records:
        stored = record.transfer_syntax_uid
        if not record.blob_key or stored not in syntaxes(record):
            return None
        total += len(_part_header(boundary, stored)) + record.size + 2
    return total


def instances_response(ctx: WebContext, retrieval: Retrieval, syntaxes: Syntaxes) -> DrivenStream:
    """The instances, one multipart part each, streamed; the next piece is read while the
    one before it is sent. With a Content-Length when every instance goes as stored: each
    write then goes to the connection as it is (chunked encoding copies it into a frame)."""
    boundary = secrets.token_hex(16)
    tally = retrieval.tally

    async def produce() -> AsyncGenerator[bytes, None]:
        parts = _Parts(retrieval, syntaxes, boundary)
        reading = asyncio.ensure_future(ctx.blocking(parts.next))
        try:
            while (piece := await reading) is not None:
                reading = asyncio.ensure_future(ctx.blocking(parts.next))
                for _ in range(piece.begins):
                    tally.begin()
                for data in piece.data:
                    yield data
                for _ in range(piece.ends):
                    tally.end(sent=True)
                if piece.unreadable:
                    tally.begin()
                    tally.end(sent=False)
                    raise OSError("a stored instance could not be read for WADO-RS")
        finally:
            # the read under way still owns the open instance: close it once it is done
            reading.add_done_callback(partial(_close_after, parts))

    async def done(complete: bool) -> None:
        await finish(ctx, retrieval)

    length = _content_length(retrieval, syntaxes, boundary)
    return DrivenStream(
        produce,
        done,
        media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
        headers=None if length is None else {"Content-Length": str(length)},
    )


def _close_after(parts: _Parts, reading: asyncio.Future[_Piece | None]) -> None:
    if not reading.cancelled() and reading.exception() is None:
        with contextlib.suppress(Exception):
            parts.close()
    else:
        parts.close()


def read_dataset(retrieval: Retrieval, record: InstanceRecord) -> Dataset:
    """One instance as a pydicom Dataset, as stored (OSError when it cannot be read). Blocking;
    one instance in memory."""
    data = retrieval.open(record, deliverable_syntaxes(record), part10=True)
    if data is None:
        raise OSError("a stored instance could not be read for WADO-RS")
    try:
        return dcmread(io.BytesIO(data.read()))
    finally:
        data.close()


def metadata_response(
    ctx: WebContext, retrieval: Retrieval, instance_url: Callable[[InstanceRecord], str]
) -> DrivenStream:
    """A DICOM JSON array, one object per instance, built and sent one instance at a time;
    values longer than BULK_THRESHOLD bytes become BulkDataURIs."""
    tally = retrieval.tally

    def one(record: InstanceRecord) -> bytes:
        ds = read_dataset(retrieval, record)
        base = instance_url(record)

        def bulk(element: DataElement) -> str:
            return f"{base}/bulkdata/{int(element.tag):08X}"

        body: dict[str, Any] = ds.to_json_dict(BULK_THRESHOLD, bulk)
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    async def produce() -> AsyncGenerator[bytes, None]:
        yield b"["
        for i, record in enumerate(retrieval.records):
            tally.begin()
            try:
                part = await ctx.blocking(partial(one, record))
            except Exception:
                tally.end(sent=False)
                raise
            yield (b"," if i else b"") + part
            tally.end(sent=True)
        yield b"]"

    async def done(complete: bool) -> None:
        await finish(ctx, retrieval)

    return DrivenStream(produce, done, media_type=DICOM_JSON)


def parse_frames(text: str) -> list[int]:
    """Frame numbers of a frames resource (``1,3,5``): WebError(400) unless 1-based numbers."""
    parts = text.split(",")
    if not all(p.isdigit() and 0 < int(p) < 2**31 for p in parts) or len(parts) > 10_000:
        raise WebError(400, "frame list must be comma-separated frame numbers from 1")
    return [int(p) for p in parts]


def octet_parts(ranges: list[MediaRange]) -> None:
    if wants_multipart(ranges, OCTETS) is None:
        raise WebError(
            406,
            'this resource is offered as multipart/related; type="application/octet-stream" only'
            " (uncompressed pixel data; compressed frames are not offered: retrieve the instance)",
        )


def frames(ds: Dataset, numbers: list[int]) -> list[bytes]:
    """The frames asked for, from uncompressed little-endian pixel data."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if "PixelData" not in ds:
        raise WebError(404, "this instance has no pixel data", audit=False)
    if syntax not in UNCOMPRESSED or int(ds.BitsAllocated) % 8:
        raise WebError(
            406,
            f"frames are offered for uncompressed little-endian pixel data only, not "
            f"{UID(syntax).name or syntax}; retrieve the whole instance",
        )
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    size *= int(ds.BitsAllocated) // 8
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if any(n > count for n in numbers):
        raise WebError(404, f"this instance has {count} frame(s)", audit=False)
    pixels = bytes(ds.PixelData)
    return [pixels[(n - 1) * size : n * size] for n in numbers]


def bulk_value(ds: Dataset, tag: int) -> bytes:
    """The value of a top-level element, as stored (a BulkDataURI of our metadata)."""
    if tag not in ds:
        raise WebError(404, f"no element {tag:08X} at the top level of this instance", audit=False)
    value = ds[tag].value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise WebError(404, f"element {tag:08X} is not bulk data", audit=False)


def octet_response(chunks: list[bytes]) -> DrivenStream:
    boundary = secrets.token_hex(16)

    async def produce() -> AsyncGenerator[bytes, None]:
        for chunk in chunks:
            yield f"--{boundary}\r\nContent-Type: {OCTETS}\r\n\r\n".encode("ascii")
            yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    async def nothing(complete: bool) -> None:
        return None

    return DrivenStream(
        produce, nothing, media_type=f'multipart/related; type="{OCTETS}"; boundary={boundary}'
    )


def json_accepted(ranges: list[MediaRange]) -> None:
    if not (wants(ranges, DICOM_JSON) or wants(ranges, "application/json")):
        raise WebError(406, "this resource is offered as application/dicom+json only")
