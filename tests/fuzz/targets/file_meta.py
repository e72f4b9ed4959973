"""The File Meta writer (`stream.encode_file_meta`, put in front of every received C-STORE data
set) against pydicom's `write_file_meta_info` and reader, and its reader on the way out
(`stream.skip_file_meta`, used by C-GET/C-MOVE) against pydicom's File Meta reader.

Input: first byte even -> five fields for the writer, separated by b"|"; odd -> a stored object
for the reader."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Final

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dsutils import decode

from pacsguard.dicom.stream import encode_file_meta, skip_file_meta
from pacsguard.errors import MalformedPdu
from tests.fuzz.harness import Defect, Harness

FIELDS: Final = (
    "sop_class_uid",
    "sop_instance_uid",
    "transfer_syntax",
    "implementation_uid",
    "implementation_version",
)
_META_KEYWORDS: Final = (
    "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "ImplementationVersionName",
)


def _meta_of(part10: bytes) -> FileMetaDataset:
    """pydicom's reading of the File Meta Information group of `part10`."""
    stream = BytesIO(part10)
    read_preamble(stream, False)
    head = stream.read(12)
    length = int.from_bytes(head[8:12], "little")
    return FileMetaDataset(decode(BytesIO(head + stream.read(length)), False, True))


def _plain(text: str) -> bool:
    """A value pydicom writes as we do: printable ASCII, one value, no padding of its own."""
    return text.isascii() and text.isprintable() and "\\" not in text and text == text.strip()


def check_writer(fields: list[str]) -> None:
    values = dict(zip(FIELDS, fields, strict=True))
    try:
        ours = encode_file_meta(**values)
    except ValueError:
        if all(len(v) <= 64 * 1024 for v in fields):
            raise Defect("encode_file_meta refused values of a sane length") from None
        return
    if len(ours) % 2 or ours[:132] != b"\x00" * 128 + b"DICM":
        raise Defect("not a Part 10 preamble, or an odd length")
    meta = _meta_of(ours)
    if len(ours) != 144 + meta[0x00020000].value:
        raise Defect("File Meta group length disagrees with its elements")
    if bytes(meta.FileMetaInformationVersion) != b"\x00\x01":
        raise Defect("wrong File Meta Information Version")
    for field, keyword in zip(FIELDS, _META_KEYWORDS, strict=True):
        raw = meta.get_item(keyword).value
        written = values[field].encode("ascii", "replace")
        if bytes(raw).rstrip(b"\x00 ") != written.rstrip(b"\x00 ") and not (
            # one pad byte is added to an odd length: a value that ends in the pad is ambiguous
            len(written) % 2 and bytes(raw)[:-1] != written
        ):
            raise Defect(f"{keyword} written as {bytes(raw)!r:.200}")
    try:
        transfer_syntax = skip_file_meta(BytesIO(ours + b"\x08\x00\x05\x00CS\x00\x00"))
    except MalformedPdu as exc:
        raise Defect(f"skip_file_meta refuses what encode_file_meta wrote: {exc}") from exc
    expected = str(meta.get("TransferSyntaxUID", "") or "")
    if transfer_syntax != expected:
        raise Defect("skip_file_meta reads another transfer syntax than pydicom")
    if all(_plain(v) for v in fields) and all(fields[:4]):
        reference = BytesIO()
        reference.write(b"\x00" * 128 + b"DICM")
        pydicom_meta = FileMetaDataset()
        pydicom_meta.FileMetaInformationVersion = b"\x00\x01"
        for field, keyword in zip(FIELDS, _META_KEYWORDS, strict=True):
            value = values[field]
            setattr(pydicom_meta, keyword, UID(value) if "UID" in keyword else value)
        write_file_meta_info(reference, pydicom_meta, enforce_standard=True)
        if reference.getvalue() != ours:
            raise Defect("encode_file_meta differs from pydicom's write_file_meta_info")


def check_reader(data: bytes) -> None:
    stream = BytesIO(data)
    try:
        ours = skip_file_meta(stream)
    except MalformedPdu:
        return
    reference = BytesIO(data)
    try:
        read_preamble(reference, False)
        meta = _read_file_meta_info(reference)  # what dcmread does
        expected = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as exc:
        raise Defect(f"skip_file_meta read a group pydicom refuses: {exc!r}") from exc
    if stream.tell() < reference.tell():
        # pydicom ignores the group length and reads on while the tags are in group 0002; a
        # reader of a non-seekable stream cannot look ahead, and our writer never does this.
        return
    if ours != expected:
        raise Defect(f"transfer syntax {ours!r:.100} where pydicom reads {expected!r:.100}")
    if stream.tell() != reference.tell():
        raise Defect(f"data set at {stream.tell()}, pydicom finds it at {reference.tell()}")


def check(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        check_reader(data[1:])
    else:
        fields = data[1:].decode("latin-1").split("|")
        check_writer((fields + [""] * 5)[:5])


def seeds() -> Iterator[bytes]:
    fields = [
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.826.0.1.3680043.8.498.12345",
        "1.2.840.10008.1.2.1",
        "1.2.826.0.1.3680043.8.498.7267656",
        "PACSGUARD_1",
    ]
    yield b"\x00" + "|".join(fields).encode()
    yield b"\x00" + "|".join(f + "0" for f in fields).encode()
    part10 = encode_file_meta(**dict(zip(FIELDS, fields, strict=True)))
    yield b"\x01" + part10 + b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"


HARNESS = Harness(
    name="file_meta",
    check=check,
    seeds=seeds,
)
