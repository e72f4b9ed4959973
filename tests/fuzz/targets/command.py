"""DIMSE command set codec (pacsguard.dicom.command) against pydicom's Implicit VR decoder, which
pynetdicom uses for command sets; plus decode -> encode -> decode round trips."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode

from pacsguard.dicom.command import ELEMENTS, CommandError, CommandValue, decode_command
from pacsguard.dicom.command import encode_command as encode_command_set
from pacsguard.dicom.dimse import command_values
from tests.fuzz.harness import Defect, Harness

_TEXT_VRS = ("UI", "AE", "LO")
_NON_ASCII = object()
#: NUL and the ASCII characters Python's str.strip() takes for whitespace.
_PADDING = "\x00\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "


def _components(text: str) -> list[str]:
    """A text value as comparable components: split at backslashes (pydicom splits multi-valued
    text; we keep it whole), padding removed. pydicom strips Python's whitespace (also \\t,
    \\x1c-\\x1f) from UIDs and AE titles where PS3.5 pads with spaces and NULs only; we keep such
    bytes, and the value then fails UID validation downstream. So both sides lose both here."""
    return [part.strip(_PADDING) for part in text.split("\\")]


def _reference(data: bytes) -> dict[str, object]:
    """What pydicom reads from the same bytes, for the elements we decode."""
    ds = decode(BytesIO(data), True, True)
    values: dict[str, object] = {}
    for keyword, (tag, vr) in ELEMENTS.items():
        if tag not in ds:
            continue
        raw = ds.get_item(tag)
        if vr in _TEXT_VRS and raw is not None and not bytes(raw.value or b"").isascii():
            values[keyword] = _NON_ASCII  # pydicom reads latin-1, we replace non-ASCII bytes
            continue
        value = ds[tag].value
        if vr == "AT":
            if value is None or value == "":
                values[keyword] = ()
            elif isinstance(value, int):
                values[keyword] = (int(value),)
            else:
                values[keyword] = tuple(int(v) for v in value)
        elif vr in _TEXT_VRS:
            if value is None:
                text = ""
            elif isinstance(value, str):
                text = value
            else:
                text = "\\".join(str(v) for v in value)
            values[keyword] = text
        else:
            values[keyword] = value
    return values


def _agrees(vr: str, ours: CommandValue, reference: object) -> bool:
    if reference is _NON_ASCII:
        return isinstance(ours, str) and "\ufffd" in ours
    if vr in _TEXT_VRS:
        return (
            isinstance(ours, str)
            and isinstance(reference, str)
            and (_components(ours) == _components(reference))
        )
    return ours == reference


def check(data: bytes) -> None:
    try:
        command = decode_command(data)
    except CommandError:
        return
    try:
        reference = _reference(data)
    except Exception as exc:
        raise Defect(f"decode_command accepted bytes pydicom cannot read: {exc!r}") from exc
    for keyword, value in command.items():
        vr = ELEMENTS[keyword][1]
        if not _agrees(vr, value, reference.get(keyword)):
            raise Defect(f"{keyword}: ours {value!r}, pydicom {reference.get(keyword)!r}")
    values = dict(command)
    try:
        encoded = encode_command_set(values)
    except CommandError:
        if all(not isinstance(v, str) or v.isascii() for v in values.values()):
            raise Defect("a decoded all-ASCII command set does not encode") from None
        return
    again = dict(decode_command(encoded))
    values.pop("CommandGroupLength", None)
    if again.pop("CommandGroupLength") != len(encoded) - 12:
        raise Defect("wrong group length")
    if again != values:
        raise Defect(f"round trip changed the command: {values!r} -> {again!r}")


def _seed_primitives() -> Iterator[tuple[object, bool]]:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    store = C_STORE()
    store.MessageID, store.AffectedSOPClassUID = 1, ct
    store.AffectedSOPInstanceUID, store.Priority = "1.2.826.0.1.3680043.8.498.1", 0
    store.MoveOriginatorApplicationEntityTitle, store.MoveOriginatorMessageID = "MOVER", 7
    store.DataSet = BytesIO(b"\x00")
    yield store, True
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = 1, ct, 0xA900
    rsp.ErrorComment, rsp.OffendingElement = "odd", [0x00100010, 0x00100020]
    yield rsp, False
    for kind, uid in (
        (C_FIND, "1.2.840.10008.5.1.4.1.2.2.1"),
        (C_GET, "1.2.840.10008.5.1.4.1.2.2.3"),
    ):
        rq = kind()
        rq.MessageID, rq.AffectedSOPClassUID, rq.Priority = 3, uid, 2
        rq.Identifier = BytesIO(b"\x00")
        yield rq, True
    move = C_MOVE()
    move.MessageIDBeingRespondedTo, move.AffectedSOPClassUID = 4, "1.2.840.10008.5.1.4.1.2.2.2"
    move.Status, move.NumberOfRemainingSuboperations = 0xFF00, 3
    move.NumberOfCompletedSuboperations, move.NumberOfFailedSuboperations = 1, 0
    move.NumberOfWarningSuboperations = 0
    yield move, False
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 9, "1.2.840.10008.1.1"
    yield echo, True


def seeds() -> Iterator[bytes]:
    for primitive, request in _seed_primitives():
        values, _ = command_values(primitive, request)  # type: ignore[arg-type]
        yield encode_command_set(values)
    yield encode_command_set({"CommandField": 0x0FFF, "MessageIDBeingRespondedTo": 3,
                              "CommandDataSetType": 0x0101})  # fmt: skip


HARNESS = Harness(
    name="command",
    check=check,
    seeds=seeds,
    max_len=2048,
)
