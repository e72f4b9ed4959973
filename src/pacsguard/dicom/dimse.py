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
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_FIND_RQ,
    C_FIND_RSP,
    C_GET_RQ,
    C_GET_RSP,
    C_MOVE_RQ,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

from pacsguard.dicom import uids
from pacsguard.dicom.ul import RawPdu
from pacsguard.errors import MalformedPdu

DimsePrimitive = C_ECHO | C_FIND | C_STORE | C_GET | C_MOVE

_MESSAGE_FOR: Final[dict[tuple[type, bool], type[DIMSEMessage]]] = {
    (C_ECHO, True): C_ECHO_RQ,
    (C_ECHO, False): C_ECHO_RSP,
    (C_FIND, True): C_FIND_RQ,
    (C_FIND, False): C_FIND_RSP,
    (C_STORE, True): C_STORE_RQ,
    (C_STORE, False): C_STORE_RSP,
    (C_GET, True): C_GET_RQ,
    (C_GET, False): C_GET_RSP,
    (C_MOVE, True): C_MOVE_RQ,
    (C_MOVE, False): C_MOVE_RSP,
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


#: DIMSE command fields (PS3.7 E.1) of the messages pacsguard's asyncio peers exchange.
_COMMANDS: Final[dict[int, type[DIMSEMessage]]] = {
    0x0001: C_STORE_RQ,
    0x8001: C_STORE_RSP,
    0x0020: C_FIND_RQ,
    0x8020: C_FIND_RSP,
    0x0030: C_ECHO_RQ,
    0x8030: C_ECHO_RSP,
    0x0010: C_GET_RQ,
    0x8010: C_GET_RSP,
    0x0021: C_MOVE_RQ,
    0x8021: C_MOVE_RSP,
    0x0FFF: C_CANCEL_RQ,
}


class MessageAssembler:
    """Collect P-DATA-TF PDUs into DIMSE messages, bounding the bytes of each message.

    pynetdicom's `DIMSEMessage.decode_msg` would do this, but it reads a process-wide switch
    (`_config.STORE_RECV_CHUNKED_DATASET`, which the archive turns on for its own server) and
    then needs a pynetdicom Association. So the fragments are joined here (PS3.8 E.2: control
    header bit 0 = command, bit 1 = last fragment) and pynetdicom decodes the command set.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        self._reset()

    def _reset(self) -> None:
        self._command = bytearray()
        self._data = bytearray()
        self._message: DIMSEMessage | None = None
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
        except Exception as exc:
            raise MalformedPdu(f"undecodable P-DATA-TF: {exc.__class__.__name__}") from None
        for item in pdata.presentation_data_value_items:
            value = bytes(item.presentation_data_value or b"")
            if not value:
                raise MalformedPdu("empty presentation data value")
            header, fragment = value[0], value[1:]
            if header & 0x01:
                if self._message is not None:
                    raise MalformedPdu("command fragment after the command set was complete")
                self._command += fragment
                if header & 0x02:
                    self._message = self._decode_command(int(item.presentation_context_id or 0))
                    if self._message.command_set.CommandDataSetType == 0x0101:
                        return self._finish()
            else:
                if self._message is None:
                    raise MalformedPdu("data set fragment before the command set")
                self._data += fragment
                if header & 0x02:
                    return self._finish()
        return None

    def _decode_command(self, context_id: int) -> DIMSEMessage:
        try:
            command = decode(BytesIO(bytes(self._command)), True, True)
            cls = _COMMANDS[int(command.CommandField)]
        except Exception as exc:
            raise MalformedPdu(f"undecodable DIMSE command set: {exc.__class__.__name__}") from None
        message = cls()
        message.command_set = command
        message.context_id = context_id
        return message

    def _finish(self) -> DIMSEMessage:
        message = self._message
        assert message is not None
        message.data_set = BytesIO(bytes(self._data))
        self._reset()
        return message
