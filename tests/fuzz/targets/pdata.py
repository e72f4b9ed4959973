"""The P-DATA reader: PDU framing (`ul.read_pdu`), PDV items (`dimse.presentation_data_values`)
against pynetdicom's P-DATA-TF decoder, and the two message assemblers
(`aio_receive.MessageReceiver`, the archive's; `dimse.MessageAssembler`, the scanner's) against
each other. The receiver spills C-STORE objects to disk past a (here tiny) size, so that path is
fuzzed too, and no temporary file may outlive an input."""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Final

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

from pacsguard.archive.dimse.aio_negotiation import AcceptedContext
from pacsguard.archive.dimse.aio_receive import Incoming, MessageReceiver
from pacsguard.dicom.command import CommandField
from pacsguard.dicom.dimse import MessageAssembler, encode_message, presentation_data_values
from pacsguard.dicom.ul import P_DATA_TF as P_DATA_TF_TYPE
from pacsguard.dicom.ul import RawPdu, read_pdu
from pacsguard.errors import MalformedPdu, ProtocolError
from tests.fuzz.harness import Defect, Harness

CT: Final = "1.2.840.10008.5.1.4.1.1.2"
FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
CONTEXTS: Final = {
    1: AcceptedContext(1, CT, ExplicitVRLittleEndian, acceptor_is_scu=False),
    3: AcceptedContext(3, FIND, ImplicitVRLittleEndian, acceptor_is_scu=False),
}
#: Small bounds, so that fuzz inputs reach the identifier limit and the spill to disk.
MAX_IDENTIFIER: Final = 600
MAX_STORE: Final = 900
MAX_PDU: Final = 16 * 1024


@functools.cache
def _runner() -> asyncio.Runner:
    """One event loop for all inputs (a new one per input would halve the rate)."""
    runner = asyncio.Runner()
    atexit.register(runner.close)
    return runner


@functools.cache
def _spool() -> Path:
    """Where the receiver spills C-STORE objects; empty between inputs."""
    folder = Path(tempfile.mkdtemp(prefix="pacsguard-fuzz-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _frames(data: bytes) -> tuple[list[RawPdu], ProtocolError | None]:
    """The PDUs `read_pdu` frames from `data` as one stream, and the error that ended it."""

    async def read_all() -> tuple[list[RawPdu], ProtocolError | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        pdus: list[RawPdu] = []
        while True:
            try:
                pdus.append(await read_pdu(reader, MAX_PDU))
            except ProtocolError as exc:
                return pdus, exc

    return _runner().run(read_all())


def _check_items(pdu: RawPdu) -> list[tuple[int, int, bytes]] | None:
    try:
        ours = [(c, h, bytes(f)) for c, h, f in presentation_data_values(pdu.data)]
    except MalformedPdu:
        return None
    reference = P_DATA_TF()
    try:
        reference.decode(pdu.data)
    except Exception as exc:
        raise Defect(f"PDV items pynetdicom cannot decode: {exc!r}") from exc
    theirs = [
        (int(item.presentation_context_id), item.presentation_data_value[0],
         bytes(item.presentation_data_value[1:]))
        for item in reference.presentation_data_value_items
    ]  # fmt: skip
    if ours != theirs:
        raise Defect(f"PDV items differ from pynetdicom's: {ours!r} != {theirs!r}")
    return ours


def _summary(incoming: Incoming) -> tuple[dict[str, object], int, bytes | None]:
    message = incoming.message
    data = incoming.data
    stored = incoming.stored_object
    if stored is not None:
        part10 = stored if isinstance(stored, bytes) else stored.read_bytes()
        if part10[128:132] != b"DICM":
            raise Defect("stored object without a Part 10 preamble")
        end = 144 + int.from_bytes(part10[140:144], "little")
        meta = decode(BytesIO(part10[132:end]), False, True)  # the File Meta we put in front
        if meta.TransferSyntaxUID != incoming.context.transfer_syntax:
            raise Defect("stored object's File Meta names another transfer syntax")
        data = part10[end:]
    return dict(message.command), message.context_id, data


def check(data: bytes) -> None:
    spool = _spool()
    pdus, _ended = _frames(data)
    if _ended is None:
        raise Defect("framing ended without an error")
    receiver = MessageReceiver(
        CONTEXTS, max_identifier_bytes=MAX_IDENTIFIER, max_store_bytes=MAX_STORE
    )
    assembler = MessageAssembler()
    received: list[tuple[dict[str, object], int, bytes | None]] = []
    assembled: list[tuple[dict[str, object], int, bytes | None]] = []
    refused = False
    previous, tempfile.tempdir = tempfile.tempdir, str(spool)
    try:
        for pdu in pdus:
            if pdu.pdu_type != P_DATA_TF_TYPE:
                break
            items = _check_items(pdu)
            try:
                for incoming in receiver.feed(pdu):
                    try:
                        received.append(_summary(incoming))
                    finally:
                        incoming.discard()
            except MalformedPdu:
                refused = True
                if items is None:
                    break
            try:
                message = assembler.feed(pdu)
            except MalformedPdu:
                if not refused:
                    raise Defect("the assembler refused what the receiver took") from None
                break
            if message is not None:
                assembled.append((dict(message.command), message.context_id, message.data))
            if refused:
                break
    finally:
        receiver.close()
        tempfile.tempdir = previous
    if os.listdir(spool):
        raise Defect("a temporary file outlived its message")
    if not refused and [_oversized(m) for m in received] != [_oversized(m) for m in assembled]:
        raise Defect(f"receiver and assembler disagree: {received!r:.2000} != {assembled!r:.2000}")


def _oversized(
    message: tuple[dict[str, object], int, bytes | None],
) -> tuple[dict[str, object], int, bytes | int | None]:
    """Past MAX_STORE the receiver keeps reading but writes nothing more (a sparse file of the
    announced size, which the service refuses as too large): only the size is comparable."""
    command, context_id, data = message
    if data is not None and len(data) > MAX_STORE and command.get("CommandField") == 1:
        return command, context_id, len(data)
    return message


def seeds() -> Iterator[bytes]:
    store = C_STORE()
    store.MessageID, store.AffectedSOPClassUID, store.Priority = 1, CT, 0
    store.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    store.DataSet = BytesIO(b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.2\x00" * 40)
    yield encode_message(store, 1, 256, request=True)
    yield encode_message(store, 1, 0, request=True)
    find = C_FIND()
    find.MessageID, find.AffectedSOPClassUID, find.Priority = 2, FIND, 0
    find.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    yield encode_message(find, 3, 64, request=True)
    get = C_GET()
    get.MessageID, get.AffectedSOPClassUID, get.Priority = 2, FIND, 0
    get.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " * 70)
    yield encode_message(get, 3, 0, request=True)
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 5, "1.2.840.10008.1.1"
    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 2
    yield encode_message(echo, 1, 0, request=True) + bytes.fromhex("05000000000400000000")
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = 1, CT, 0
    yield encode_message(rsp, 1, 0, request=False)


assert CommandField.C_STORE_RQ == 1
HARNESS = Harness(
    name="pdata",
    check=check,
    seeds=seeds,
)
