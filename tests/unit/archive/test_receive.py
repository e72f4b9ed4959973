"""The front end's message receiver: C-STORE objects in memory when small, staged (encrypted, in
the staging area, never the temp folder) when large, refused past the configured size, and
always a valid Part 10 object for the service."""

from __future__ import annotations

import os
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
from pacsguard.archive.staging import StagingArea
from pacsguard.dicom.dimse import encode_dataset, encode_message
from pacsguard.errors import MalformedPdu
from tests.wire import split_pdus

CT = "1.2.840.10008.5.1.4.1.1.2"
UID = "1.2.826.0.1.3680043.8.498.1"
CONTEXT = AcceptedContext(1, CT, ExplicitVRLittleEndian, acceptor_is_scu=False)


@pytest.fixture(autouse=True)
def temp_folder(tmp_path: Path) -> Iterator[Path]:
    """The process-wide temp folder, watched: nothing may be written there."""
    folder = tmp_path / "process-temp"
    folder.mkdir()
    previous, tempfile.tempdir = tempfile.tempdir, str(folder)
    yield folder
    tempfile.tempdir = previous
    assert not list(folder.iterdir())


@pytest.fixture
def staging(tmp_path: Path) -> StagingArea:
    return StagingArea(tmp_path / "data" / "tmp")


def _receiver(staging: StagingArea | None, max_store_bytes: int = 1 << 30) -> MessageReceiver:
    return MessageReceiver(
        {1: CONTEXT},
        max_identifier_bytes=1024,
        max_store_bytes=max_store_bytes,
        staging=staging,
    )


def _on_disk(fd: int) -> bytes:
    """The bytes of an (unnamed) staged file as they sit on the disk."""
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _open_fds() -> set[str]:
    """This process's open descriptors (less the one that listed them, closed by now)."""
    return {n for n in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{n}")}


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


def test_a_small_object_stays_in_memory_as_part10(staging: StagingArea) -> None:
    (incoming,) = _receive(_receiver(staging), _store_rq(1000))
    assert incoming.staged is None and incoming.part10 is not None
    ds = dcmread(BytesIO(incoming.part10))
    assert ds.SOPInstanceUID == UID and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert len(ds.PixelData) == 1000


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "unlinked-at-once"])
def test_a_large_object_is_staged_encrypted_and_unnamed(
    staging: StagingArea, unnamed: bool
) -> None:
    staging._anonymous = unnamed
    before = _open_fds()
    (incoming,) = _receive(_receiver(staging), _store_rq(IN_MEMORY_OBJECT_BYTES + 10))
    staged = incoming.staged
    assert incoming.part10 is None and staged is not None
    assert staged.size > IN_MEMORY_OBJECT_BYTES + 10
    assert not list(staging.root.iterdir())  # no name, in the staging folder or anywhere
    (fd,) = {int(n) for n in _open_fds() - before}
    assert os.readlink(f"/proc/self/fd/{fd}").startswith(str(staging.root))
    disk = _on_disk(fd)
    assert len(disk) > IN_MEMORY_OBJECT_BYTES
    assert b"LAB-1" not in disk and b"\x01" * 64 not in disk and UID.encode() not in disk
    for _ in range(2):  # the service reads it twice: header, then blob
        with staged.open() as stream:
            ds = dcmread(stream)
        assert ds.PatientID == "LAB-1"
        assert len(ds.PixelData) == IN_MEMORY_OBJECT_BYTES + 10
    incoming.discard()
    assert _open_fds() == before  # freed
    with pytest.raises(ValueError, match="discarded"):
        staged.open()


def test_past_the_size_limit_bytes_are_counted_not_kept(staging: StagingArea) -> None:
    before = _open_fds()
    (incoming,) = _receive(_receiver(staging, max_store_bytes=50_000), _store_rq(200_000))
    staged = incoming.staged
    assert staged is not None and staged.size > 200_000  # what the service refuses
    (fd,) = {int(n) for n in _open_fds() - before}
    assert os.fstat(fd).st_size < 100  # nothing kept: the header and an empty last chunk
    with pytest.raises(ValueError, match="not all kept"):
        staged.open()
    incoming.discard()


def test_close_mid_message_frees_the_staged_file(staging: StagingArea) -> None:
    receiver = _receiver(staging)
    before = _open_fds()
    pdus = split_pdus(_store_rq(IN_MEMORY_OBJECT_BYTES * 2))
    for pdu in pdus[:-1]:
        assert receiver.feed(pdu) == []
    assert len(_open_fds() - before) == 1
    receiver.close()
    assert _open_fds() == before


def test_without_a_staging_area_nothing_is_written_anywhere(tmp_path: Path) -> None:
    (incoming,) = _receive(_receiver(None), _store_rq(IN_MEMORY_OBJECT_BYTES + 10))
    assert incoming.staged is None and incoming.part10 is not None
    assert len(dcmread(BytesIO(incoming.part10)).PixelData) == IN_MEMORY_OBJECT_BYTES + 10


def test_the_staging_folder_is_private_and_swept_at_start(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    root.mkdir(mode=0o755)
    (root / ".staged-0123456789abcdef").write_bytes(b"left by a crash")
    (root / "not-ours").write_bytes(b"kept")
    StagingArea(root)
    assert root.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["not-ours"]


def test_data_on_an_unaccepted_context_is_refused() -> None:
    receiver = MessageReceiver({3: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=1 << 30)
    with pytest.raises(MalformedPdu, match="not accepted"):
        _receive(receiver, _store_rq(10))


def test_a_bad_pdv_after_a_complete_message_leaves_no_temporary_file(
    staging: StagingArea,
) -> None:
    """Found by fuzzing (tests/fuzz/targets/pdata.py): a C-STORE completed by one PDV of a PDU
    and a bad PDV after it in the same PDU lost the message, and its staged file stayed open
    (staged files are unnamed: an open descriptor is what would leak)."""
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
    open_before = len(os.listdir("/proc/self/fd"))
    receiver = MessageReceiver(
        {1: CONTEXT}, max_identifier_bytes=1024, max_store_bytes=2000, staging=staging
    )
    with pytest.raises(MalformedPdu, match="not accepted"):
        receiver.feed(split_pdus(pdu)[0])
    receiver.close()
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert [p for p in staging.root.iterdir()] == []
