"""DIMSE messages (PS3.7) on top of the upper layer.

`encode_message` turns a pynetdicom DIMSE primitive (the familiar way to say what to send) into
the bytes of its P-DATA-TF PDUs; `MessageAssembler` collects incoming P-DATA-TF PDUs into
`DimseMessage`s, with a bound on the bytes one message may take so that a hostile peer cannot
grow our memory. Command sets go through `pacsguard.dicom.command` (see there for why).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Final

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode, encode

from pacsguard.dicom import uids
from pacsguard.dicom.command import (
    DATA_SET_PRESENT,
    NO_DATA_SET,
    Command,
    CommandError,
    CommandField,
    CommandValue,
    decode_command,
    encode_command,
)
from pacsguard.dicom.ul import RawPdu
from pacsguard.errors import MalformedPdu

DimsePrimitive = C_ECHO | C_FIND | C_STORE | C_GET | C_MOVE

_RESPONSE_STATUS: Final = ("Status", "OffendingElement", "ErrorComment")
_SUBOPERATIONS: Final = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)
#: Per (primitive, is request): the command field, the primitive attributes that become command
#: elements (PS3.7 9.3), and the attribute holding the data set, if the message may carry one.
_LAYOUT: Final[dict[tuple[type, bool], tuple[CommandField, tuple[str, ...], str | None]]] = {
    (C_ECHO, True): (CommandField.C_ECHO_RQ, ("AffectedSOPClassUID", "MessageID"), None),
    (C_ECHO, False): (
        CommandField.C_ECHO_RSP,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", "Status", "ErrorComment"),
        None,
    ),
    (C_STORE, True): (
        CommandField.C_STORE_RQ,
        (
            "AffectedSOPClassUID",
            "MessageID",
            "Priority",
            "AffectedSOPInstanceUID",
            "MoveOriginatorApplicationEntityTitle",
            "MoveOriginatorMessageID",
        ),
        "DataSet",
    ),
    (C_STORE, False): (
        CommandField.C_STORE_RSP,
        (
            "AffectedSOPClassUID",
            "MessageIDBeingRespondedTo",
            "AffectedSOPInstanceUID",
            *_RESPONSE_STATUS,
        ),
        None,
    ),
    (C_FIND, True): (
        CommandField.C_FIND_RQ,
        ("AffectedSOPClassUID", "MessageID", "Priority"),
        "Identifier",
    ),
    (C_FIND, False): (
        CommandField.C_FIND_RSP,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", *_RESPONSE_STATUS),
        "Identifier",
    ),
    (C_GET, True): (
        CommandField.C_GET_RQ,
        ("AffectedSOPClassUID", "MessageID", "Priority"),
        "Identifier",
    ),
    (C_GET, False): (
        CommandField.C_GET_RSP,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", *_SUBOPERATIONS, *_RESPONSE_STATUS),
        "Identifier",
    ),
    (C_MOVE, True): (
        CommandField.C_MOVE_RQ,
        ("AffectedSOPClassUID", "MessageID", "Priority", "MoveDestination"),
        "Identifier",
    ),
    (C_MOVE, False): (
        CommandField.C_MOVE_RSP,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", *_SUBOPERATIONS, *_RESPONSE_STATUS),
        "Identifier",
    ),
}

#: Largest DIMSE message (command + data set) we assemble from a peer by default.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_PDU_HEADER: Final = struct.Struct(">BBIIBB")  # type, reserved, PDU length; item length, id, ctl
#: Bytes a PDV item adds around its fragment in a PDU (PS3.8 9.3.5: 6 + 4 + 1 + 1).
PDV_OVERHEAD: Final = 6
_COMMAND: Final = 0x01
_LAST: Final = 0x02


@dataclass(slots=True)
class DimseMessage:
    """One complete DIMSE message: its command set and, when it carries one in memory, the
    encoded identifier or data set."""

    command: Command
    context_id: int
    data: bytes | None = None

    @property
    def field(self) -> int:
        return self.command.field


def command_values(
    primitive: DimsePrimitive, request: bool
) -> tuple[dict[str, CommandValue | None], bytes | None]:
    """The command elements of `primitive` by keyword, and its encoded data set if any."""
    field, keywords, data_attribute = _LAYOUT[(type(primitive), request)]
    values: dict[str, CommandValue | None] = {"CommandField": int(field)}
    for keyword in keywords:
        value = getattr(primitive, keyword)
        if value is None or value == "":
            continue
        if isinstance(value, list):
            value = tuple(int(v) for v in value)
        values[keyword] = value if isinstance(value, int | tuple) else str(value)
    data: bytes | None = None
    if data_attribute is not None:
        stream = getattr(primitive, data_attribute)
        if stream is not None:
            data = stream.getvalue()
    values["CommandDataSetType"] = NO_DATA_SET if data is None else DATA_SET_PRESENT
    return values, data


def pdata_pdus(payload: bytes, context_id: int, max_pdu: int, *, command: bool) -> bytes:
    """P-DATA-TF PDUs carrying `payload` as command or data set fragments, one PDV per PDU
    (as pynetdicom and dcmtk send them); `max_pdu` 0 means one fragment."""
    size = len(payload) if max_pdu <= 0 else max(max_pdu - PDV_OVERHEAD, 1)
    kind = _COMMAND if command else 0x00
    view = memoryview(payload)
    parts: list[bytes] = []
    offset = 0
    while True:
        fragment = view[offset : offset + size]
        offset += len(fragment)
        last = offset >= len(payload)
        parts.append(pdv_header(context_id, kind | (_LAST if last else 0), len(fragment)))
        parts.append(bytes(fragment))
        if last:
            return b"".join(parts)


_ITEM_HEADER: Final = struct.Struct(">IBB")  # item length, presentation context id, control


def presentation_data_values(pdu: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """(presentation context id, message control header, fragment) of each PDV item in one
    P-DATA-TF PDU (`pdu` is the whole PDU, header included; PS3.8 9.3.5 and E.2). The fragments
    are views into `pdu`, not copies: pynetdicom's decoder copied every fragment, half a
    millisecond per 512 KiB. MalformedPdu for items that do not add up."""
    view = memoryview(pdu)
    end = len(view)
    if end < 6 or view[0] != 0x04 or struct.unpack_from(">I", view, 2)[0] != end - 6:
        raise MalformedPdu("P-DATA-TF length does not match its contents")
    offset = 6
    if offset == end:
        raise MalformedPdu("P-DATA-TF without presentation data values")
    while offset < end:
        if end - offset < _ITEM_HEADER.size:
            raise MalformedPdu("P-DATA-TF ends inside a PDV item header")
        length, context_id, control = _ITEM_HEADER.unpack_from(view, offset)
        if length < 2 or length > end - offset - 4:
            raise MalformedPdu(f"PDV item length {length} does not fit the P-DATA-TF")
        if length == 2:
            raise MalformedPdu("empty presentation data value")
        yield context_id, control, view[offset + _ITEM_HEADER.size : offset + 4 + length]
        offset += 4 + length


def pdv_header(context_id: int, control: int, length: int) -> bytes:
    """The 12 bytes in front of a `length`-byte fragment in a P-DATA-TF holding one PDV:
    PDU type, length, PDV item length, context id, message control header (PS3.8 E.2)."""
    return _PDU_HEADER.pack(0x04, 0, length + 6, length + 2, context_id, control)


def encode_message(
    primitive: DimsePrimitive, context_id: int, max_pdu: int, *, request: bool
) -> bytes:
    """Bytes of the P-DATA-TF PDUs carrying `primitive`; `max_pdu` 0 means unlimited."""
    values, data = command_values(primitive, request)
    try:
        command = encode_command(values)
    except CommandError as exc:
        raise ValueError(f"cannot encode {type(primitive).__name__}: {exc}") from None
    pdus = pdata_pdus(command, context_id, max_pdu, command=True)
    if data is None:
        return pdus
    return pdus + pdata_pdus(data, context_id, max_pdu, command=False)


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
        self._message: DimseMessage | None = None
        self._size = 0

    def feed(self, pdu: RawPdu) -> DimseMessage | None:
        """Add one P-DATA-TF PDU; return the message once its last fragment has arrived."""
        self._size += len(pdu.data)
        if self._size > self._max:
            raise MalformedPdu(
                f"DIMSE message exceeds {self._max} bytes; refusing to assemble more"
            )
        for context_id, header, fragment in presentation_data_values(pdu.data):
            if header & 0x01:
                if self._message is not None:
                    raise MalformedPdu("command fragment after the command set was complete")
                self._command += fragment
                if header & 0x02:
                    self._message = self._decode_command(context_id)
                    if not self._message.command.has_data_set:
                        return self._finish()
            else:
                if self._message is None:
                    raise MalformedPdu("data set fragment before the command set")
                self._data += fragment
                if header & 0x02:
                    return self._finish()
        return None

    def _decode_command(self, context_id: int) -> DimseMessage:
        try:
            command = decode_command(self._command)
        except CommandError as exc:
            raise MalformedPdu(f"undecodable DIMSE command set: {exc}") from None
        return DimseMessage(command, context_id)

    def _finish(self) -> DimseMessage:
        message = self._message
        assert message is not None
        if message.command.has_data_set:
            message.data = bytes(self._data)
        self._reset()
        return message
