"""Streaming DIMSE data sets: send a C-STORE data set in fragments without holding it in memory.

pynetdicom's `DIMSEMessage.encode_msg` needs the whole data set as one `BytesIO`; for a 2 GB
instance that is 2 GB of memory. Here the command set is still encoded by pynetdicom's message
classes, and each data set fragment travels in a P-DATA-TF that pynetdicom's `P_DATA_TF` encodes
(PS3.8 E.2: control header 0x00 = data set fragment, 0x02 = last data set fragment).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import BinaryIO, Final

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from pacsguard.errors import MalformedPdu

#: Bytes a PDV item adds around its fragment (length 4, context id 1, control header 1).
PDV_OVERHEAD: Final = 6
_DATA: Final = 0x00
_DATA_LAST: Final = 0x02
#: Largest File Meta Information group we read from a stored file.
_MAX_META: Final = 64 * 1024

ReadChunk = Callable[[int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


def encode_store_command(primitive: C_STORE, context_id: int, max_pdu: int) -> bytes:
    """P-DATA-TF bytes of a C-STORE-RQ command set only, flagged "data set follows"."""
    primitive.DataSet = BytesIO(b"\0")  # any content marks the data set as present
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.data_set = None
    return b"".join(
        bytes(P_DATA_TF(p).encode()) for p in message.encode_msg(context_id, max_pdu or 0)
    )


def encode_data_fragment(context_id: int, fragment: bytes, *, last: bool) -> bytes:
    """One P-DATA-TF carrying one data set fragment."""
    primitive = P_DATA()
    header = _DATA_LAST if last else _DATA
    primitive.presentation_data_value_list.append((context_id, bytes([header]) + fragment))
    return bytes(P_DATA_TF(primitive).encode())


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
    if len(head) != 12 or head[:6] != b"\x02\x00\x00\x00UL":
        raise MalformedPdu("stored instance has no File Meta Information Group Length")
    (group_length,) = struct.unpack("<I", head[8:12])
    if group_length > _MAX_META:
        raise MalformedPdu("stored instance has an oversized File Meta Information group")
    body = stream.read(group_length)
    if len(body) != group_length:
        raise MalformedPdu("stored instance ends inside its File Meta Information")
    meta = decode(BytesIO(head + body), False, True)
    return str(meta.get("TransferSyntaxUID", "") or "")
