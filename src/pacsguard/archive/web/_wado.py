"""WADO-RS (PS3.18 10.4): instances as ``multipart/related; type="application/dicom"``,
metadata as DICOM JSON, frames and bulk data as ``multipart/related`` parts.

Every retrieve is the service's (`ArchiveService.retrieve`: authorize the `get` permission,
choose the instances, write the `move-request` line before anything is read); the instances
are read through its `Retrieval` in a transfer syntax the client accepts, counted on its tally,
and `Retrieval.finish` writes the closing line however the answer ended (`DrivenStream`).

Transfer syntax of ``application/dicom`` parts (PS3.18 8.7.3.5): with ``transfer-syntax=*``
each instance goes as stored, byte for byte; with a named one, in that one; without the
parameter, Explicit VR Little Endian (the default PS3.18 names), compressed instances
included. The service converts between Explicit and Implicit VR Little Endian and
decompresses JPEG, JPEG-LS, JPEG 2000 and RLE (`service.pixels`) within `[server]
max_decompressed_bytes`; 406 before anything is sent when some instance cannot be had as
asked, saying why. Each part's Content-Type names its transfer syntax.

Metadata reads each instance's header only (up to the pixel data, and what follows it), and
sends the pixel data as a BulkDataURI. Frames read their byte ranges (native), or their
fragments (encapsulated: the offset table or a walk over the fragment headers); an
encapsulated frame goes as stored when the client accepts that (``application/octet-stream``
with ``transfer-syntax=*`` or the stored syntax, or the syntax's image media type, e.g.
``image/jpeg``), decoded otherwise (the default for frames: uncompressed). Bulk data of native
pixel data streams from its byte range; of encapsulated pixel data, decoded frame after frame.
One chunk or frame at a time is in memory.
Instances are read in pieces of up to PIECE bytes, one being sent while the next is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Collection, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from pydicom.dataelem import DataElement

from pacsguard.archive.model import InstanceRecord
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import InstanceData, Retrieval, deliverable_syntaxes, pixels
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
    return lambda record: (EXPLICIT_LE,)


def _refusals(retrieval: Retrieval, syntaxes: Syntaxes) -> list[str]:
    found = (retrieval.refusal(r, syntaxes(r)) for r in retrieval.records)
    return [why for why in found if why is not None]


async def check_deliverable(ctx: WebContext, retrieval: Retrieval, syntaxes: Syntaxes) -> None:
    """406 (the trail closed, nothing sent) when some instance cannot be had as asked (for
    instances to be decompressed, their headers are read to check the size limit)."""
    refused = await ctx.blocking(partial(_refusals, retrieval, syntaxes))
    if refused:
        await finish(ctx, retrieval)
        raise WebError(
            406,
            f"{len(refused)} of the {len(retrieval.records)} instances cannot be sent in the "
            f"transfer syntax asked for ({refused[0]}); ask for transfer-syntax=* to get "
            "every instance as stored",
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
            try:
                # may be short before the end (a decompressed instance comes a frame at a
                # time): only b"" ends an instance
                body = self._data.read(PIECE - size)
            except BaseException:
                self.close()
                raise
            if not body:
                self.close()
                small += b"\r\n"
                ends += 1
                continue
            size += len(body)
            if len(body) < _SMALL:
                small += body
            else:
                out += [small, body] if small else [body]
                small = b""
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


def read_layout(
    retrieval: Retrieval, record: InstanceRecord, *, inline_up_to: int = 0
) -> pixels.Layout:
    """One instance's header and where its pixel data lies (OSError when it cannot be read).
    Blocking; never the pixel data in memory (unless native and `inline_up_to` bytes)."""
    try:
        return retrieval.layout(record, inline_up_to=inline_up_to)
    except Exception as exc:
        log.warning("a stored instance could not be read for WADO-RS: %s", type(exc).__name__)
        raise OSError("a stored instance could not be read for WADO-RS") from None


def metadata_json(layout: pixels.Layout, base: str) -> dict[str, Any]:
    """DICOM JSON of one instance (PS3.18 F.2): values longer than BULK_THRESHOLD bytes and
    the pixel data as BulkDataURIs under `base` (the instance's URL)."""

    def bulk(element: DataElement) -> str:
        return f"{base}/bulkdata/{int(element.tag):08X}"

    body: dict[str, Any] = layout.header.to_json_dict(BULK_THRESHOLD, bulk)
    if layout.pixel_tag is not None and layout.pixel_tag not in layout.header:
        body[f"{layout.pixel_tag:08X}"] = {
            "vr": layout.pixel_vr,
            "BulkDataURI": f"{base}/bulkdata/{layout.pixel_tag:08X}",
        }
    body.update(layout.tail.to_json_dict(BULK_THRESHOLD, bulk))
    return body


def metadata_response(
    ctx: WebContext, retrieval: Retrieval, instance_url: Callable[[InstanceRecord], str]
) -> DrivenStream:
    """A DICOM JSON array, one object per instance, built and sent one instance at a time
    from its header only; values longer than BULK_THRESHOLD bytes become BulkDataURIs."""
    tally = retrieval.tally

    def one(record: InstanceRecord) -> bytes:
        layout = read_layout(retrieval, record, inline_up_to=BULK_THRESHOLD)
        body = metadata_json(layout, instance_url(record))
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


#: Media types of compressed frames as stored (PS3.18 Table 8.7.3-2 and -4), by syntax.
FRAME_TYPES: Final = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_RLE_TYPES: Final = ("image/dicom-rle", "image/x-dicom-rle")


def _multipart_ranges(ranges: list[MediaRange]) -> list[tuple[str, str]]:
    """(part type, transfer-syntax parameter) of each range a multipart answer may follow."""
    out: list[tuple[str, str]] = []
    for media in ranges:
        syntax = media.params.get("transfer-syntax", "").strip()
        if media.type in ("*/*", "multipart/*"):
            out.append(("*/*", syntax))
        elif media.type == "multipart/related":
            out.append((media.params.get("type", "*/*").strip().lower(), syntax))
    return out


@dataclass(frozen=True, slots=True)
class PixelAnswer:
    """How frames or bulk data go: `decode` encapsulated pixel data or send it as stored, and
    the parts' Content-Type."""

    decode: bool
    part_type: str


def pixel_answer(ranges: list[MediaRange], layout: pixels.Layout, *, pixel: bool) -> PixelAnswer:
    """What the Accept ranges allow for `layout`'s pixel data (`pixel`: frames, or the pixel
    data's bulk data; else other bulk data, octets as stored); WebError(406) when nothing.

    Native pixel data: ``application/octet-stream`` (uncompressed). Encapsulated: as stored
    for ``application/octet-stream; transfer-syntax=*`` (or the stored syntax) or the
    syntax's image type; otherwise decoded, as ``application/octet-stream`` without a
    transfer-syntax or with Explicit VR Little Endian's (PS3.18 8.7.3.3.2)."""
    if not pixel:
        if wants_multipart(ranges, OCTETS) is None:
            raise WebError(406, f'bulk data is offered as multipart/related; type="{OCTETS}"')
        return PixelAnswer(False, OCTETS)
    accepted = _multipart_ranges(ranges)
    uncompressed = ("", EXPLICIT_LE, "*") if not layout.encapsulated else ("", EXPLICIT_LE)
    stored = layout.transfer_syntax
    image = FRAME_TYPES.get(stored, "")
    if layout.encapsulated:
        for part, syntax in accepted:
            if part in (OCTETS, "application/*", "*/*") and syntax in ("*", stored):
                return PixelAnswer(False, f"{OCTETS}; transfer-syntax={stored}")
            fits = part == image or (image == _RLE_TYPES[0] and part in _RLE_TYPES)
            if fits and syntax in ("", "*", stored):
                return PixelAnswer(False, f"{part}; transfer-syntax={stored}")
    for part, syntax in accepted:
        if part in (OCTETS, "application/*", "*/*") and syntax in uncompressed:
            return PixelAnswer(layout.encapsulated, OCTETS)
    offered = f"{OCTETS} (uncompressed)" + (
        f", or as stored: {image or OCTETS} with transfer-syntax={stored}"
        if layout.encapsulated
        else ""
    )
    raise WebError(406, f"this pixel data is offered as multipart/related parts of {offered}")


def check_frames(layout: pixels.Layout, numbers: list[int]) -> None:
    """WebError unless `layout` has pixel data with the frames `numbers`."""
    if layout.pixel_tag is None:
        raise WebError(404, "this instance has no pixel data", audit=False)
    if not layout.encapsulated and int(layout.header.get("BitsAllocated", 8) or 8) % 8:
        raise WebError(406, "frames of bit-packed (1-bit) pixel data are not offered")
    count = layout.frame_count
    if any(n > count for n in numbers):
        raise WebError(404, f"this instance has {count} frame(s)", audit=False)


def check_decoding(
    layout: pixels.Layout, answer: PixelAnswer, limit: int, frames: int | None
) -> None:
    """WebError(406) when the `frames` asked for (None: all) cannot be decoded within
    `limit` bytes, or not at all."""
    if answer.decode:
        try:
            pixels.check_decodable(layout, limit, frames=frames)
        except pixels.CannotDecode as exc:
            raise WebError(
                406, f"the pixel data cannot be sent uncompressed: {exc.reason}"
            ) from None


def bulk_source(
    retrieval: Retrieval, record: InstanceRecord, layout: pixels.Layout, tag: int, decode: bool
) -> Iterator[bytes]:
    """The chunks of the bulk data `tag` of `record` (a BulkDataURI of our metadata)."""
    if tag == layout.pixel_tag:
        if not layout.encapsulated:
            return retrieval.value(record, layout)
        numbers = list(range(1, layout.frame_count + 1))
        return retrieval.frames(record, layout, numbers, decode=decode)
    for dataset in (layout.header, layout.tail):
        if tag in dataset:
            value = dataset[tag].value
            if isinstance(value, bytes | bytearray):
                return iter([bytes(value)])
            raise WebError(404, f"element {tag:08X} is not bulk data", audit=False)
    raise WebError(404, f"no element {tag:08X} at the top level of this instance", audit=False)


def pixel_response(
    ctx: WebContext,
    retrieval: Retrieval,
    source: Iterator[bytes],
    part_type: str,
    *,
    one_part: bool,
) -> DrivenStream:
    """Each item of `source` (read on the pool as it is sent) as one part, or with
    `one_part` all of them as one part (bulk data); the trail closes when the answer ends."""
    boundary = secrets.token_hex(16)
    tally = retrieval.tally
    head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("ascii")

    async def produce() -> AsyncGenerator[bytes, None]:
        tally.begin()
        try:
            if one_part:
                yield head
            while (chunk := await ctx.blocking(partial(next, source, None))) is not None:
                yield chunk if one_part else head + chunk + b"\r\n"
            if one_part:
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode("ascii")
        except Exception:
            tally.end(sent=False)
            raise
        tally.end(sent=True)

    async def done(complete: bool) -> None:
        close = getattr(source, "close", None)
        if callable(close):
            await ctx.blocking(close)
        await finish(ctx, retrieval)

    media_type = (
        f'multipart/related; type="{part_type.split(";", maxsplit=1)[0]}"; boundary={boundary}'
    )
    return DrivenStream(produce, done, media_type=media_type)


def json_accepted(ranges: list[MediaRange]) -> None:
    if not (wants(ranges, DICOM_JSON) or wants(ranges, "application/json")):
        raise WebError(406, "this resource is offered as application/dicom+json only")
