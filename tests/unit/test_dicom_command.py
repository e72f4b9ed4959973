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
from pacsguard.dicom.dimse import (
    DimsePrimitive,
    MessageAssembler,
    encode_message,
    presentation_data_values,
)
from pacsguard.errors import MalformedPdu
from tests.wire import split_pdus

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890"  # odd length: padded


STUDY_KEY = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
GET = "1.2.840.10008.5.1.4.1.2.2.3"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def _make(kind: type[DimsePrimitive], **attributes: object) -> Callable[[], DimsePrimitive]:
    """A factory of fresh primitives (encoding consumes their BytesIO data sets)."""

    def make() -> DimsePrimitive:
        primitive = kind()
        for name, value in attributes.items():
            setattr(primitive, name, BytesIO(value) if isinstance(value, bytes) else value)
        return primitive

    return make


_store_rq = _make(
    C_STORE, MessageID=65535, AffectedSOPClassUID=CT, AffectedSOPInstanceUID=INSTANCE,
    Priority=2, MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3,
    DataSet=b"\x08\x00\x16\x00\x04\x00\x00\x00abcd",
)  # fmt: skip
_find_final = _make(
    C_FIND, MessageIDBeingRespondedTo=2, AffectedSOPClassUID=FIND, Status=0xA900,
    OffendingElement=[0x00100010, 0x00080020],
)  # fmt: skip
CASES: list[tuple[Callable[[], DimsePrimitive], bool, type[DIMSEMessage]]] = [
    (_make(C_ECHO, MessageID=7, AffectedSOPClassUID="1.2.840.10008.1.1"), True, C_ECHO_RQ),
    (
        _make(C_ECHO, MessageIDBeingRespondedTo=7, AffectedSOPClassUID="1.2.840.10008.1.1",
              Status=0),
        False, C_ECHO_RSP,
    ),
    (_store_rq, True, C_STORE_RQ),
    (
        _make(C_STORE, MessageIDBeingRespondedTo=1, AffectedSOPClassUID=CT,
              AffectedSOPInstanceUID=INSTANCE, Status=0xA700,
              ErrorComment="object larger than allowed"),
        False, C_STORE_RSP,
    ),
    (
        _make(C_FIND, MessageID=2, AffectedSOPClassUID=FIND, Priority=0, Identifier=STUDY_KEY),
        True, C_FIND_RQ,
    ),
    (
        _make(C_FIND, MessageIDBeingRespondedTo=2, AffectedSOPClassUID=FIND, Status=0xFF00,
              Identifier=STUDY_KEY),
        False, C_FIND_RSP,
    ),
    (_find_final, False, C_FIND_RSP),
    (
        _make(C_GET, MessageID=4, AffectedSOPClassUID=GET, Priority=1, Identifier=STUDY_KEY),
        True, C_GET_RQ,
    ),
    (
        _make(C_GET, MessageIDBeingRespondedTo=4, AffectedSOPClassUID=GET, Status=0xFF00,
              NumberOfRemainingSuboperations=10, NumberOfCompletedSuboperations=2,
              NumberOfFailedSuboperations=0, NumberOfWarningSuboperations=0),
        False, C_GET_RSP,
    ),
    (
        _make(C_MOVE, MessageID=5, AffectedSOPClassUID=MOVE, Priority=0,
              MoveDestination="STORESCP", Identifier=STUDY_KEY),
        True, C_MOVE_RQ,
    ),
    (
        _make(C_MOVE, MessageIDBeingRespondedTo=5, AffectedSOPClassUID=MOVE, Status=0xB000,
              NumberOfCompletedSuboperations=3, NumberOfFailedSuboperations=1,
              NumberOfWarningSuboperations=0, Identifier=b"\x08\x00\x58\x11\x00\x00\x00\x00"),
        False, C_MOVE_RSP,
    ),
]  # fmt: skip


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


@pytest.mark.parametrize(("make", "request_", "message_class"), CASES)
def test_assembler_reads_back_what_was_encoded(
    make: Callable[[], DimsePrimitive], request_: bool, message_class: type[DIMSEMessage]
) -> None:
    primitive = make()
    assembler = MessageAssembler()
    done = [
        assembler.feed(p) for p in split_pdus(encode_message(primitive, 3, 40, request=request_))
    ]
    message = done[-1]
    assert message is not None and all(d is None for d in done[:-1])
    assert message.context_id == 3
    command_pdu = split_pdus(_pynetdicom_bytes(make(), message_class, 0))[0]
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
    stored = split_pdus(encode_message(_store_rq(), 1, 0, request=True))[0]
    command = decode_command(stored.data[12:])
    assert command.field == CommandField.C_STORE_RQ
    assert command.text("AffectedSOPInstanceUID") == INSTANCE  # padding removed
    assert command.text("MoveOriginatorApplicationEntityTitle") == "MOVER"
    final = decode_command(
        split_pdus(encode_message(_find_final(), 1, 0, request=False))[0].data[12:]
    )
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


def test_pdv_items_read_as_pynetdicom_writes_them() -> None:
    from pynetdicom.pdu_primitives import P_DATA

    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, b"\x03abc"], [3, b"\x00" + b"x" * 70000]]
    pdu = bytes(P_DATA_TF(primitive).encode())
    items = [(c, h, bytes(f)) for c, h, f in presentation_data_values(pdu)]
    assert items == [(1, 0x03, b"abc"), (3, 0x00, b"x" * 70000)]


@pytest.mark.parametrize(
    ("pdu", "message"),
    [
        (b"\x04\x00\x00\x00\x00\x00", "without presentation data values"),
        (b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x03\x01\x03a", "length does not match"),
        (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03", "empty presentation data value"),
        (b"\x04\x00\x00\x00\x00\x07\x00\x00\x00\x09\x01\x03a", "does not fit"),
        (b"\x04\x00\x00\x00\x00\x03\x00\x00\x00", "inside a PDV item header"),
        (b"\x04\x00\x00\x00\x00\x07\x00\x00\x00\x01\x01\x03a", "does not fit"),
        (b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00", "length does not match"),
    ],
)
def test_malformed_pdv_items_are_refused(pdu: bytes, message: str) -> None:
    with pytest.raises(MalformedPdu, match=message):
        list(presentation_data_values(pdu))


def _stored(meta_body: bytes) -> bytes:
    head = b"\x02\x00\x00\x00UL\x04\x00" + len(meta_body).to_bytes(4, "little")
    return b"\x00" * 128 + b"DICM" + head + meta_body + b"\x08\x00\x05\x00CS\x00\x00"


_TS = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        pytest.param(_stored(_TS)[:138] + b"\x06\x00" + _stored(_TS)[140:], "Group Length",
                     id="group length element not 4 bytes"),
        pytest.param(_stored(_TS + b"\x08\x00\x05\x00CS\x00\x00"), "do not fill",
                     id="element outside group 0002"),
        pytest.param(_stored(_TS + b"\x02"), "do not fill", id="trailing byte in the group"),
        pytest.param(_stored(_TS.replace(b"UI", b"\x55\xba")), "do not fill", id="not a VR"),
    ],
)  # fmt: skip
def test_skip_file_meta_refuses_what_pydicom_reads_otherwise(stored: bytes, message: str) -> None:
    """Found by fuzzing (tests/fuzz/targets/file_meta.py): each of these made skip_file_meta
    start the data set elsewhere than pydicom, or raise pydicom's own errors."""
    from pacsguard.dicom.stream import skip_file_meta

    assert skip_file_meta(BytesIO(_stored(_TS))) == "1.2.840.10008.1.2.1"
    with pytest.raises(MalformedPdu, match=message):
        skip_file_meta(BytesIO(stored))
