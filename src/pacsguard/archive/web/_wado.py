"""WADO-RS (PS3.18 10.4): instances as ``multipart/related; type="application/dicom"``,
metadata as DICOM JSON, frames and bulk data of uncompressed pixel data as
``multipart/related; type="application/octet-stream"``.

Every retrieve goes through the service: `instances_to_retrieve` authorizes (the `get`
permission) and writes the `move-request` line before anything is read, `open_instance` reads
a stored object, `audit_retrieve` ends it with the tally (sent, failed, cut off). Instances are
sent as stored, byte for byte, one chunk at a time (`DrivenStream`); each part's Content-Type
names its transfer syntax. There is no transcoding yet: an Accept that asks for another
transfer syntax than an instance's gets 406. Metadata and frames read one instance at a time.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from starlette.concurrency import run_in_threadpool

from pacsguard.archive.model import InstanceRecord
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import RetrieveTally
from pacsguard.archive.web._context import WebContext
from pacsguard.archive.web._errors import WebError
from pacsguard.archive.web._media import MediaRange, wants, wants_multipart
from pacsguard.archive.web._stream import DrivenStream
from pacsguard.dicom.levels import Level
from pacsguard.errors import AuditLogError

log = logging.getLogger(__name__)

CHUNK: Final = 1024 * 1024
DICOM: Final = "application/dicom"
OCTETS: Final = "application/octet-stream"
DICOM_JSON: Final = "application/dicom+json"
#: Values longer than this become BulkDataURIs in metadata (PS3.18 F.2.6).
BULK_THRESHOLD: Final = 1024
_UNCOMPRESSED: Final = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


async def locate(
    ctx: WebContext,
    principal: Principal,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[InstanceRecord]:
    """The stored instances a WADO-RS path names, authorized and announced in the audit trail
    (Denied, AuditLogError pass through); WebError(404) when there are none."""
    level, uid = (
        (Level.IMAGE, instance)
        if instance is not None
        else (Level.SERIES, series)
        if series is not None
        else (Level.STUDY, study)
    )
    records = await run_in_threadpool(
        ctx.service.instances_to_retrieve, principal, Action.GET, level, [uid]
    )
    inside = [
        r
        for r in records
        if r.study_instance_uid == study and series in (None, r.series_instance_uid)
    ]
    if records and not inside:  # announced, then nothing sent: the trail still closes
        await end_retrieve(ctx, principal, records, RetrieveTally(not_started=len(records)))
    if not inside:
        raise WebError(404, f"no {level.name.lower()} {uid} in this archive", audit=False)
    return inside


async def end_retrieve(
    ctx: WebContext, principal: Principal, records: list[InstanceRecord], tally: RetrieveTally
) -> None:
    try:
        await run_in_threadpool(
            lambda: ctx.service.audit_retrieve(principal, records, destination=None, tally=tally)
        )
    except AuditLogError:
        log.error("the end of a DICOMweb retrieve could not be audited (the audit log says why)")


def check_transfer_syntax(accept: MediaRange, records: list[InstanceRecord]) -> None:
    """406 when the client asks for a transfer syntax some instance is not stored in."""
    wanted = accept.params.get("transfer-syntax", "*").strip()
    if wanted == "*":
        return
    other = [r for r in records if r.transfer_syntax_uid != wanted]
    if other:
        raise WebError(
            406,
            f"{len(other)} of the {len(records)} instances are not stored in transfer syntax "
            f"{wanted[:64]} and this archive does not transcode; ask for transfer-syntax=* "
            f"(or {other[0].transfer_syntax_uid})",
        )


def instances_response(
    ctx: WebContext, principal: Principal, records: list[InstanceRecord]
) -> DrivenStream:
    """The instances as stored, one multipart part each, streamed."""
    boundary = secrets.token_hex(16)
    tally = RetrieveTally(not_started=len(records))

    async def produce() -> AsyncGenerator[bytes, None]:
        for record in records:
            tally.not_started -= 1
            tally.in_flight += 1
            stream = await run_in_threadpool(ctx.service.open_instance, record)
            try:
                syntax = record.transfer_syntax_uid
                yield (
                    f"--{boundary}\r\nContent-Type: {DICOM}"
                    + (f"; transfer-syntax={syntax}" if syntax else "")
                    + "\r\n\r\n"
                ).encode("ascii")
                while chunk := await run_in_threadpool(stream.read, CHUNK):
                    yield chunk
                yield b"\r\n"
            finally:
                await run_in_threadpool(stream.close)
            tally.in_flight -= 1
            tally.sent += 1
        yield f"--{boundary}--\r\n".encode("ascii")

    async def finish(complete: bool) -> None:
        await end_retrieve(ctx, principal, records, tally)

    return DrivenStream(
        produce,
        finish,
        media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
    )


def _read(ctx: WebContext, record: InstanceRecord) -> Dataset:
    with ctx.service.open_instance(record) as stream:
        return dcmread(stream)


def metadata_response(
    ctx: WebContext,
    principal: Principal,
    records: list[InstanceRecord],
    instance_url: Callable[[InstanceRecord], str],
) -> DrivenStream:
    """A DICOM JSON array, one object per instance, built and sent one instance at a time;
    values longer than BULK_THRESHOLD bytes become BulkDataURIs."""
    tally = RetrieveTally(not_started=len(records))

    def one(record: InstanceRecord) -> bytes:
        ds = _read(ctx, record)
        base = instance_url(record)

        def bulk(element: DataElement) -> str:
            return f"{base}/bulkdata/{int(element.tag):08X}"

        body: dict[str, Any] = ds.to_json_dict(BULK_THRESHOLD, bulk)
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    async def produce() -> AsyncGenerator[bytes, None]:
        yield b"["
        for i, record in enumerate(records):
            tally.not_started -= 1
            tally.in_flight += 1
            part = await run_in_threadpool(one, record)
            yield (b"," if i else b"") + part
            tally.in_flight -= 1
            tally.sent += 1
        yield b"]"

    async def finish(complete: bool) -> None:
        await end_retrieve(ctx, principal, records, tally)

    return DrivenStream(produce, finish, media_type=DICOM_JSON)


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


def frames(ctx: WebContext, record: InstanceRecord, numbers: list[int]) -> list[bytes]:
    """The frames asked for, from uncompressed pixel data. Blocking."""
    ds = _read(ctx, record)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if "PixelData" not in ds:
        raise WebError(404, "this instance has no pixel data", audit=False)
    if syntax not in _UNCOMPRESSED or int(ds.BitsAllocated) % 8:
        raise WebError(
            406,
            f"frames are offered for uncompressed little-endian pixel data only, not "
            f"{UID(syntax).name or syntax}; retrieve the whole instance",
        )
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    size *= int(ds.BitsAllocated) // 8
    count = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = bytes(ds.PixelData)
    if any(n > count for n in numbers):
        raise WebError(404, f"this instance has {count} frame(s)", audit=False)
    return [pixels[(n - 1) * size : n * size] for n in numbers]


def bulk_value(ctx: WebContext, record: InstanceRecord, tag: int) -> bytes:
    """The value of a top-level element, as stored (a BulkDataURI of our metadata). Blocking."""
    ds = _read(ctx, record)
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
        produce,
        nothing,
        media_type=f'multipart/related; type="{OCTETS}"; boundary={boundary}',
    )


def json_accepted(ranges: list[MediaRange]) -> None:
    if not (wants(ranges, DICOM_JSON) or wants(ranges, "application/json")):
        raise WebError(406, "this resource is offered as application/dicom+json only")
