"""Streaming DIMSE data sets: send a C-STORE data set in fragments without holding it in memory.

pynetdicom's `DIMSEMessage.encode_msg` needs the whole data set as one `BytesIO`; for a 2 GB
instance that is 2 GB of memory. Here the command set goes first, then each data set fragment in
its own P-DATA-TF (PS3.8 E.2: control header 0x00 = data set fragment, 0x02 = the last one).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import BinaryIO, Final

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode

from pacsguard.dicom.command import encode_command
from pacsguard.dicom.dimse import PDV_OVERHEAD, command_values, pdata_pdus, pdv_header
from pacsguard.dicom.header import file_meta_end
from pacsguard.errors import MalformedPdu

_DATA: Final = 0x00
_DATA_LAST: Final = 0x02
#: Largest File Meta Information group we read from a stored file.
_MAX_META: Final = 64 * 1024

ReadChunk = Callable[[int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


def encode_store_command(primitive: C_STORE, context_id: int, max_pdu: int) -> bytes:
    """P-DATA-TF bytes of a C-STORE-RQ command set only, flagged "data set follows"."""
    primitive.DataSet = BytesIO(b"\0")  # any content marks the data set as present
    values, _ = command_values(primitive, request=True)
    return pdata_pdus(encode_command(values), context_id, max_pdu, command=True)


def encode_data_fragment(context_id: int, fragment: bytes, *, last: bool) -> bytes:
    """One P-DATA-TF carrying one data set fragment."""
    return pdv_header(context_id, _DATA_LAST if last else _DATA, len(fragment)) + fragment


async def send_data_set(write: Write, read: ReadChunk, context_id: int, max_pdu: int) -> int:
    """Send a data set read chunk by chunk; returns its length. One fragment is held at a time
    (plus one read ahead, to know which fragment is the last)."""
    size = max(max_pdu - PDV_OVERHEAD, 64)
    current = await read(size)
    total = 0
    while True:
        following = await read(size) if current else b""
        last = not following
        await write(encode_data_fragment(context_id, current, last=last))
        total += len(current)
        if last:
            return total
        current = following


def skip_file_meta(stream: BinaryIO) -> str:
    """Consume a Part 10 preamble and File Meta Information (PS3.10 7.1) from a stream that need
    not be seekable; return the Transfer Syntax UID. The stream is left at the data set."""
    prefix = stream.read(132)
    if len(prefix) != 132 or prefix[128:] != b"DICM":
        raise MalformedPdu("stored instance is not a DICOM Part 10 file")
    head = stream.read(12)
    # (0002,0000) UL, explicit VR little endian: tag, 'UL', length 4, value.
    if len(head) != 12 or head[:8] != b"\x02\x00\x00\x00UL\x04\x00":
        raise MalformedPdu("stored instance has no File Meta Information Group Length")
    (group_length,) = struct.unpack("<I", head[8:12])
    if group_length > _MAX_META:
        raise MalformedPdu("stored instance has an oversized File Meta Information group")
    body = stream.read(group_length)
    if len(body) != group_length:
        raise MalformedPdu("stored instance ends inside its File Meta Information")
    # The header walker's reading of the group: elements of group 0002 that fill it exactly (or
    # pydicom, which dcmread uses, would start the data set elsewhere: found by fuzzing)
    if file_meta_end(prefix + head + body) != 144 + group_length:
        raise MalformedPdu("stored instance has File Meta elements that do not fill its group")
    try:
        meta = decode(BytesIO(head + body), False, True)
        transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as exc:  # pydicom raises assorted errors on bad bytes (found by fuzzing)
        raise MalformedPdu(
            f"stored instance has undecodable File Meta Information: {exc.__class__.__name__}"
        ) from None
    return transfer_syntax


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")  # UIDs and SH are ASCII; anything else is mangled
    return raw + pad if len(raw) % 2 else raw  # and then refused by the UID checks downstream


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    """A Part 10 preamble, "DICM" and File Meta Information (PS3.10 7.1), Explicit VR Little
    Endian, for a data set received over the network. Built with `struct` rather than pydicom's
    `write_file_meta_info`, which costs about 0.75 ms per instance (measured)."""
    for value in (sop_class_uid, sop_instance_uid, transfer_syntax, implementation_uid):
        if len(value) > _MAX_META:
            raise ValueError("UID too long for File Meta Information")
    body = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _meta_element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _meta_element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _meta_element(0x0012, b"UI", _padded(implementation_uid, b"\x00")),
            _meta_element(0x0013, b"SH", _padded(implementation_version, b" ")),
        )
    )
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body
