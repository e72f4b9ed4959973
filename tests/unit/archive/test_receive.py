"""The front end's message receiver: C-STORE objects in memory when small, on disk when large,
refused past the configured size, and always a valid Part 10 object for the service."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_STORE

from pacsguard.archive.dimse.aio_negotiation import AcceptedContext
from pacsguard.archive.dimse.aio_receive import IN_MEMORY_OBJECT_BYTES, Incoming, MessageReceiver
from pacsguard.dicom.dimse import encode_dataset, encode_message
from pacsguard.errors import MalformedPdu
from tests.wire import split_pdus

CT = "1.2.840.10008.5.1.4.1.1.2"
UID = "1.2.826.0.1.3680043.8.498.1"
CONTEXT = AcceptedContext(1, CT, ExplicitVRLittleEndian, acceptor_is_scu=False)


@pytest.fixture(autouse=True)
def _tempdir(tmp_path: Path) -> Iterator[None]:
    previous, tempfile.tempdir = tempfile.tempdir, str(tmp_path)
    yield
    tempfile.tempdir = previous


def _store_rq(pixel_bytes: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = UID
    ds.PatientID = "LAB-1"
    ds.BitsAllocated = 8
    ds.PixelData = b"\x01" * pixel_bytes
    rq = C_STORE()
    rq.MessageID = 1
    rq.AffectedSOPClassUID = CT
    rq.AffectedSOPInstanceUID = UID
    rq.Priority = 2
    rq.DataSet = encode_dataset(ds, ExplicitVRLittleEndian)
    return encode_message(rq, 1, 65536, request=True)


def _receive(receiver: MessageReceiver, data: bytes) -> list[Incoming]:
    done: list[Incoming] = []
    for pdu in split_pdus(data):
        done.extend(receiver.feed(pdu))
    return done


def test_a_small_object_stays_in_memory_as_part10() -> None:
    receiver = MessageReceiver({1: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=1 << 30)
    (incoming,) = _receive(receiver, _store_rq(1000))
    assert incoming.path is None and incoming.part10 is not None
    ds = dcmread(BytesIO(incoming.part10))
    assert ds.SOPInstanceUID == UID and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert len(ds.PixelData) == 1000


def test_a_large_object_goes_to_a_temporary_file(tmp_path: Path) -> None:
    receiver = MessageReceiver({1: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=1 << 30)
    (incoming,) = _receive(receiver, _store_rq(IN_MEMORY_OBJECT_BYTES + 10))
    path = incoming.path
    assert incoming.part10 is None and path is not None and path.parent == tmp_path
    assert len(dcmread(path).PixelData) == IN_MEMORY_OBJECT_BYTES + 10
    incoming.discard()
    assert not path.exists()


def test_past_the_size_limit_the_file_is_sparse_and_oversized(tmp_path: Path) -> None:
    receiver = MessageReceiver({1: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=50_000)
    (incoming,) = _receive(receiver, _store_rq(200_000))
    path = incoming.path
    assert path is not None and path.stat().st_size > 200_000  # what the service refuses
    assert path.stat().st_blocks * 512 < 150_000  # not written past the limit
    incoming.discard()


def test_close_mid_message_removes_the_spilled_file(tmp_path: Path) -> None:
    receiver = MessageReceiver({1: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=1 << 30)
    pdus = split_pdus(_store_rq(IN_MEMORY_OBJECT_BYTES * 2))
    for pdu in pdus[:-1]:
        assert receiver.feed(pdu) == []
    assert list(tmp_path.iterdir())
    receiver.close()
    assert not list(tmp_path.iterdir())


def test_data_on_an_unaccepted_context_is_refused() -> None:
    receiver = MessageReceiver({3: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=1 << 30)
    with pytest.raises(MalformedPdu, match="not accepted"):
        _receive(receiver, _store_rq(10))


def test_a_bad_pdv_after_a_complete_message_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Found by fuzzing (tests/fuzz/targets/pdata.py): a C-STORE completed by one PDV of a PDU
    and a bad PDV after it in the same PDU lost the message, and its spilled file stayed."""
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    command, data = (bytes(p.data[12:]) for p in split_pdus(_store_rq(5000)))
    primitive = P_DATA()
    primitive.presentation_data_value_list = [
        [1, b"\x03" + command],
        [1, b"\x02" + data],
        [9, b"\x03" + command],  # a context that was never accepted
    ]
    pdu = bytes(P_DATA_TF(primitive).encode())
    receiver = MessageReceiver({1: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=2000)
    with pytest.raises(MalformedPdu, match="not accepted"):
        receiver.feed(split_pdus(pdu)[0])
    receiver.close()
    assert list(tmp_path.iterdir()) == []
