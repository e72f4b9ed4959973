"""DIMSE messages (PS3.7) on top of the upper layer, using pynetdicom's message classes.

`encode_message` turns a pynetdicom DIMSE primitive into the bytes of its P-DATA-TF PDUs;
`MessageAssembler` collects incoming P-DATA-TF PDUs into complete messages, with a bound on the
bytes one message may take so that a hostile peer cannot grow our memory.
"""

from __future__ import annotations

from io import BytesIO
from typing import Final

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import (
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_FIND_RQ,
    C_FIND_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

from pacsguard.dicom import uids
from pacsguard.dicom.ul import RawPdu
from pacsguard.errors import MalformedPdu

DimsePrimitive = C_ECHO | C_FIND | C_STORE

_MESSAGE_FOR: Final[dict[tuple[type, bool], type[DIMSEMessage]]] = {
    (C_ECHO, True): C_ECHO_RQ,
    (C_ECHO, False): C_ECHO_RSP,
    (C_FIND, True): C_FIND_RQ,
    (C_FIND, False): C_FIND_RSP,
    (C_STORE, True): C_STORE_RQ,
    (C_STORE, False): C_STORE_RSP,
}

#: Largest DIMSE message (command + data set) we assemble from a peer by default.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024


def encode_message(
    primitive: DimsePrimitive, context_id: int, max_pdu: int, *, request: bool
) -> bytes:
    """Bytes of the P-DATA-TF PDUs carrying `primitive`; `max_pdu` 0 means unlimited."""
    message = _MESSAGE_FOR[(type(primitive), request)]()
    message.primitive_to_message(primitive)
    return b"".join(
        bytes(P_DATA_TF(p).encode()) for p in message.encode_msg(context_id, max_pdu or 0)
    )


def encode_dataset(ds: Dataset, transfer_syntax: str) -> BytesIO:
    """Encode an identifier or data set for the negotiated transfer syntax."""
    implicit = transfer_syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN
    data = encode(ds, implicit, True)
    if data is None:
        raise ValueError("data set could not be encoded")
    return BytesIO(data)


def decode_dataset(data: BytesIO | None, transfer_syntax: str | None) -> Dataset | None:
    """Decode a received identifier; `None` when absent or undecodable (never raises)."""
    if data is None:
        return None
    raw = data.getvalue()
    if not raw:
        return None
    implicit = transfer_syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN
    try:
        ds = decode(BytesIO(raw), implicit, True)
        # Force parsing now, inside the guard, rather than lazily at first access.
        for _elem in ds:
            pass
    except Exception:
        return None
    return ds


class MessageAssembler:
    """Collect P-DATA-TF PDUs into DIMSE messages, bounding the bytes of each message."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        self._message = DIMSEMessage()
        self._size = 0

    def feed(self, pdu: RawPdu) -> DIMSEMessage | None:
        """Add one P-DATA-TF PDU; return the message once its last fragment has arrived."""
        self._size += len(pdu.data)
        if self._size > self._max:
            raise MalformedPdu(
                f"DIMSE message exceeds {self._max} bytes; refusing to assemble more"
            )
        pdata = P_DATA_TF()
        try:
            pdata.decode(pdu.data)
            primitive = pdata.to_primitive()
            complete = self._message.decode_msg(primitive)
        except Exception as exc:
            raise MalformedPdu(f"undecodable P-DATA-TF: {exc.__class__.__name__}") from None
        if not complete:
            return None
        message, self._message, self._size = self._message, DIMSEMessage(), 0
        return message
