"""The command-set codec against pynetdicom's encoder, byte for byte, and against bad input."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import (
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
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

from pacsguard.dicom.command import (
    CommandError,
    CommandField,
    decode_command,
    encode_command,
)
from pacsguard.dicom.dimse import DimsePrimitive, MessageAssembler, encode_message
from pacsguard.dicom.ul import RawPdu

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890"  # odd length: padded


def _echo_rq() -> C_ECHO:
    p = C_ECHO()
    p.MessageID = 7
    p.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return p


def _echo_rsp() -> C_ECHO:
    p = C_ECHO()
    p.MessageIDBeingRespondedTo = 7
    p.AffectedSOPClassUID = "1.2.840.10008.1.1"
    p.Status = 0
    return p


def _store_rq() -> C_STORE:
    p = C_STORE()
    p.MessageID = 65535
    p.AffectedSOPClassUID = CT
    p.AffectedSOPInstanceUID = INSTANCE
    p.Priority = 2
    p.MoveOriginatorApplicationEntityTitle = "MOVER"
    p.MoveOriginatorMessageID = 3
    p.DataSet = BytesIO(b"\x08\x00\x16\x00\x04\x00\x00\x00abcd")
    return p


def _store_rsp() -> C_STORE:
    p = C_STORE()
    p.MessageIDBeingRespondedTo = 1
    p.AffectedSOPClassUID = CT
    p.AffectedSOPInstanceUID = INSTANCE
    p.Status = 0xA700
    p.ErrorComment = "object larger than allowed"
    return p


def _find_rq() -> C_FIND:
    p = C_FIND()
    p.MessageID = 2
    p.AffectedSOPClassUID = FIND
    p.Priority = 0
    p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return p


def _find_rsp() -> C_FIND:
    p = C_FIND()
    p.MessageIDBeingRespondedTo = 2
    p.AffectedSOPClassUID = FIND
    p.Status = 0xFF00
    p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return p


def _find_final() -> C_FIND:
    p = C_FIND()
    p.MessageIDBeingRespondedTo = 2
    p.AffectedSOPClassUID = FIND
    p.Status = 0xA900
    p.OffendingElement = [0x00100010, 0x00080020]
    return p


def _get_rq() -> C_GET:
    p = C_GET()
    p.MessageID = 4
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    p.Priority = 1
    p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return p


def _get_rsp() -> C_GET:
    p = C_GET()
    p.MessageIDBeingRespondedTo = 4
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    p.Status = 0xFF00
    p.NumberOfRemainingSuboperations = 10
    p.NumberOfCompletedSuboperations = 2
    p.NumberOfFailedSuboperations = 0
    p.NumberOfWarningSuboperations = 0
    return p


def _move_rq() -> C_MOVE:
    p = C_MOVE()
    p.MessageID = 5
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    p.Priority = 0
    p.MoveDestination = "STORESCP"
    p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return p


def _move_rsp() -> C_MOVE:
    p = C_MOVE()
    p.MessageIDBeingRespondedTo = 5
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    p.Status = 0xB000
    p.NumberOfCompletedSuboperations = 3
    p.NumberOfFailedSuboperations = 1
    p.NumberOfWarningSuboperations = 0
    p.Identifier = BytesIO(b"\x08\x00\x58\x11\x00\x00\x00\x00")
    return p


CASES: list[tuple[Callable[[], DimsePrimitive], bool, type[DIMSEMessage]]] = [
    (_echo_rq, True, C_ECHO_RQ),
    (_echo_rsp, False, C_ECHO_RSP),
    (_store_rq, True, C_STORE_RQ),
    (_store_rsp, False, C_STORE_RSP),
    (_find_rq, True, C_FIND_RQ),
    (_find_rsp, False, C_FIND_RSP),
    (_find_final, False, C_FIND_RSP),
    (_get_rq, True, C_GET_RQ),
    (_get_rsp, False, C_GET_RSP),
    (_move_rq, True, C_MOVE_RQ),
    (_move_rsp, False, C_MOVE_RSP),
]


def _pynetdicom_bytes(
    primitive: DimsePrimitive, message_class: type[DIMSEMessage], max_pdu: int
) -> bytes:
    message = message_class()
    message.primitive_to_message(primitive)
    return b"".join(bytes(P_DATA_TF(p).encode()) for p in message.encode_msg(1, max_pdu))


@pytest.mark.parametrize(("make", "request_", "message_class"), CASES)
@pytest.mark.parametrize("max_pdu", [0, 16384, 40])
def test_encoding_matches_pynetdicom(
    make: Callable[[], DimsePrimitive],
    request_: bool,
    message_class: type[DIMSEMessage],
    max_pdu: int,
) -> None:
    ours = encode_message(make(), 1, max_pdu, request=request_)
    assert ours == _pynetdicom_bytes(make(), message_class, max_pdu)


def _pdus(data: bytes) -> list[RawPdu]:
    pdus = []
    while data:
        length = int.from_bytes(data[2:6], "big")
        pdus.append(RawPdu(data[0], data[: 6 + length]))
        data = data[6 + length :]
    return pdus


@pytest.mark.parametrize(("make", "request_", "message_class"), CASES)
def test_assembler_reads_back_what_was_encoded(
    make: Callable[[], DimsePrimitive], request_: bool, message_class: type[DIMSEMessage]
) -> None:
    primitive = make()
    assembler = MessageAssembler()
    done = [assembler.feed(p) for p in _pdus(encode_message(primitive, 3, 40, request=request_))]
    message = done[-1]
    assert message is not None and all(d is None for d in done[:-1])
    assert message.context_id == 3
    command_pdu = _pdus(_pynetdicom_bytes(make(), message_class, 0))[0]
    reference = decode(BytesIO(command_pdu.data[12:]), True, True)
    expected = {
        e.keyword: tuple(int(t) for t in (e.value if e.VM > 1 else [e.value]))
        if e.VR == "AT"
        else e.value
        for e in reference
    }
    assert dict(message.command) == expected
    command = message.command
    data = getattr(primitive, "DataSet", None) or getattr(primitive, "Identifier", None)
    assert message.data == (data.getvalue() if data is not None else None)
    assert command.has_data_set is (data is not None)


def test_decoded_values() -> None:
    stored = _pdus(encode_message(_store_rq(), 1, 0, request=True))[0]
    command = decode_command(stored.data[12:])
    assert command.field == CommandField.C_STORE_RQ
    assert command.text("AffectedSOPInstanceUID") == INSTANCE  # padding removed
    assert command.text("MoveOriginatorApplicationEntityTitle") == "MOVER"
    final = decode_command(_pdus(encode_message(_find_final(), 1, 0, request=False))[0].data[12:])
    assert final["OffendingElement"] == (0x00100010, 0x00080020)
    assert final.status == 0xA900


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x01\x03\x00\x00\x00\x01\x00\x00", "US value"),  # 3-byte US
        (b"\x00\x00\x00\x01\x02\x00", "element header"),
        (b"\x00\x00\x00\x01\x40\x00\x00\x00\x01\x00", "runs past"),
        (b"\x08\x00\x00\x01\x02\x00\x00\x00\x01\x00", "outside group 0000"),
        (b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00", "without a Command Field"),
        (b"\x00\x00\x01\x09\x03\x00\x00\x00abc" + b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00",
         "AT value"),
    ],
)  # fmt: skip
def test_malformed_command_sets_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        decode_command(data)


def test_oversized_command_set_is_refused() -> None:
    with pytest.raises(CommandError, match="exceeds"):
        decode_command(b"\x00" * (64 * 1024 + 1))


def test_unencodable_values_are_refused() -> None:
    with pytest.raises(CommandError, match="AffectedSOPInstanceUID"):
        encode_command({"CommandField": 1, "AffectedSOPInstanceUID": "1.2.\u00e9"})
    with pytest.raises(CommandError, match="MessageID"):
        encode_command({"CommandField": 1, "MessageID": 70000})
    with pytest.raises(CommandError, match="not a command element"):
        encode_command({"PatientName": "X"})


def test_file_meta_matches_pydicom() -> None:
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    from pacsguard.dicom.stream import encode_file_meta

    names = {
        "sop_class_uid": CT,
        "sop_instance_uid": INSTANCE,
        "transfer_syntax": "1.2.840.10008.1.2",
        "implementation_uid": "1.2.826.0.1.3680043.8.498.7267656",
        "implementation_version": "PACSGUARD_1",
    }
    reference = BytesIO()
    reference.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(
        **{k: UID(v) if k != "implementation_version" else v for k, v in names.items()}
    )
    write_file_meta_info(reference, meta)  # type: ignore[arg-type]
    assert encode_file_meta(**names) == reference.getvalue()
