"""Pixel data of a stored instance: where it is, its frames, and decompression.

Retrieve reads only what an answer needs from a (seekable, decrypting) blob stream:

- `read_layout` parses the data set up to the Pixel Data element (pydicom's `dcmread` with
  `stop_before_pixels`, which leaves the stream at that element), reads the element's own
  header, and steps over its value (a seek for native data; for encapsulated data a walk
  over the item headers, seeking over every fragment) to parse whatever follows it. Memory:
  the header and the tail, never the pixel data; the blob format (`blobs.aead`, AES-GCM over
  1 MiB chunks) decrypts only the chunks a seek lands in.
- `native_frame` reads one frame's byte range; `encapsulated_frame` one frame of
  encapsulated data (pydicom's `encaps.get_frame`: the Basic or Extended Offset Table when
  there is one, a walk over the fragments otherwise).
- `DecompressedReader` is the instance in Explicit or Implicit VR Little Endian, produced as
  it is read: the header, then each frame decoded in turn by pydicom's decoders (plugins:
  pylibjpeg-libjpeg for JPEG baseline, extended, lossless and JPEG-LS; pylibjpeg-openjpeg for
  JPEG 2000 and HTJ2K; pylibjpeg-rle or pydicom's own for RLE). Memory: the header and one
  compressed and one decoded frame; the whole decoded size is bounded by the caller's limit
  (`check_decodable`) before any decoding.

Attributes after decompression (PS3.5 8.2, PS3.3 C.7.6.1.1.5, C.7.6.3): Photometric
Interpretation and Planar Configuration as the decoder delivers the pixels (YBR_FULL_422 and
YBR_FULL of JPEG, YBR_ICT/YBR_RCT of JPEG 2000 become RGB, colour-by-pixel); Number of Frames
kept; Lossy Image Compression "01" (and its method added) when the data were lossy-compressed
(`lossy_method`: JPEG always, JPEG 2000 with the irreversible wavelet, JPEG-LS with NEAR > 0),
never reset when it was "01"; the SOP Instance UID unchanged (a transfer syntax
change is the same instance).
"""

from __future__ import annotations

import copy
import functools
import struct
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO, Final

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from pacsguard.dicom import uids
from pacsguard.dicom.dimse import encode_dataset

PIXEL_DATA: Final = 0x7FE00010
#: Float Pixel Data, Double Float Pixel Data, Pixel Data: where `stop_before_pixels` stops.
PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
_ITEM: Final = 0xE000FFFE
_SEQUENCE_END: Final = 0xE0DDFFFE
_LONG_VRS: Final = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT"})
EXPLICIT_LE: Final = str(uids.EXPLICIT_VR_LITTLE_ENDIAN)
IMPLICIT_LE: Final = str(uids.IMPLICIT_VR_LITTLE_ENDIAN)
UNCOMPRESSED: Final = (EXPLICIT_LE, IMPLICIT_LE)
_COPY_CHUNK: Final = 1024 * 1024

#: Syntaxes that always lose information, with their Lossy Image Compression Method (PS3.3
#: C.7.6.1.1.5.1).
ALWAYS_LOSSY: Final = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
}
#: Syntaxes that may be lossy; the first frame's code stream says (`lossy_method`).
_J2K: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
_JLS_NEAR: Final = "1.2.840.10008.1.2.4.81"


class CannotDecode(Exception):
    """The instance cannot be had uncompressed: `reason` says why (no decoder for its
    syntax, decoded size over the limit, pixel data that does not decode)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@functools.lru_cache(maxsize=64)
def decodable(transfer_syntax: str) -> bool:
    """Whether pixel data in `transfer_syntax` can be decompressed here (a decoder and one of
    its plugins installed)."""
    uid = UID(transfer_syntax)
    if not uid.is_compressed or not uid.is_encapsulated:
        return False
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


@dataclass(slots=True)
class Layout:
    """A stored instance's data set without its pixel data value, and where that value is.

    `header`: every element before the pixel data element (File Meta Information in
    `header.file_meta`), plus the elements after it (`tail`, rare: trailing padding,
    signatures). `pixel_tag` is None when there is no pixel data; `offset` is the stream
    position of its value, `length` its length (None: undefined, encapsulated)."""

    header: Dataset
    tail: Dataset
    transfer_syntax: str
    pixel_tag: int | None = None
    pixel_vr: str = "OB"
    offset: int = 0
    length: int | None = None

    @property
    def encapsulated(self) -> bool:
        return self.pixel_tag is not None and self.length is None

    def options(self) -> dict[str, Any]:
        """pydicom's decoding options for this pixel data (`as_pixel_options`)."""
        opts = as_pixel_options(self.header)
        opts["transfer_syntax_uid"] = UID(self.transfer_syntax)
        return opts

    @property
    def frame_count(self) -> int:
        count = self.header.get("NumberOfFrames", 1)
        try:
            return max(1, int(count or 1))
        except (TypeError, ValueError):
            return 1

    def decoded_frame_bytes(self) -> int:
        """Bytes of one frame uncompressed (PS3.5 8.1.1), as `check_decodable` bounds it."""
        ds = self.header
        bits = int(ds.get("BitsAllocated", 8) or 8)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * samples * bits // 8

    def native_frame_bytes(self) -> int:
        """Bytes of one native frame; ValueError when frames are not whole bytes (1-bit)."""
        bits = int(self.header.get("BitsAllocated", 8) or 8)
        if bits % 8:
            raise ValueError(f"{bits}-bit pixel data is bit-packed: frames are not byte ranges")
        return self.decoded_frame_bytes()


def read_layout(stream: BinaryIO, *, inline_up_to: int = 0) -> Layout:
    """The layout of the Part 10 file `stream` (seekable, at its start). Native pixel data of
    at most `inline_up_to` bytes is read into `header` too. ValueError or pydicom's errors
    when it is not one."""
    header = dcmread(stream, stop_before_pixels=True)
    syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
    implicit = syntax == IMPLICIT_LE
    layout = Layout(header, Dataset(), syntax)
    start = stream.tell()
    element = stream.read(8)
    if len(element) < 8:
        return layout
    group, number = struct.unpack("<HH", element[:4])
    tag = group << 16 | number
    if tag not in PIXEL_TAGS:  # dcmread stopped at the end, not at pixel data
        return layout
    if implicit:
        (length,) = struct.unpack("<I", element[4:8])
        vr = "OW" if int(header.get("BitsAllocated", 8) or 8) > 8 else "OB"
        if tag != PIXEL_DATA:
            vr = "OF" if tag == 0x7FE00008 else "OD"
        value = start + 8
    else:
        raw_vr = element[4:6]
        if raw_vr in _LONG_VRS:
            (length,) = struct.unpack("<I", stream.read(4))
            value = start + 12
        else:
            (length,) = struct.unpack("<H", element[6:8])
            value = start + 8
        vr = raw_vr.decode("ascii", "replace")
    layout.pixel_tag = tag
    layout.pixel_vr = vr
    layout.offset = value
    if length == 0xFFFFFFFF:
        layout.length = None
        stream.seek(value)
        _skip_items(stream)
    else:
        layout.length = length
        if length <= inline_up_to:
            stream.seek(value)
            header.add(DataElement(tag, vr, stream.read(length)))
        stream.seek(value + length)
    if stream.read(1):  # elements after the pixel data
        stream.seek(-1, 1)
        layout.tail = read_dataset(stream, implicit, True)
    return layout


def _skip_items(stream: BinaryIO) -> None:
    """Past the Sequence Delimitation Item of encapsulated data, reading item headers only."""
    while True:
        head = stream.read(8)
        if len(head) < 8:
            raise ValueError("encapsulated pixel data ends without its sequence delimiter")
        tag, length = struct.unpack("<II", head)
        tag = (tag & 0xFFFF) << 16 | tag >> 16
        if tag == 0xFFFEE0DD:
            return
        if tag != 0xFFFEE000 or length == 0xFFFFFFFF:
            raise ValueError("encapsulated pixel data holds something other than items")
        stream.seek(length, 1)


def native_frame(stream: BinaryIO, layout: Layout, number: int) -> bytes:
    """Frame `number` (from 1) of native pixel data: its byte range only."""
    size = layout.native_frame_bytes()
    stream.seek(layout.offset + (number - 1) * size)
    data = stream.read(size)
    if len(data) != size:
        raise ValueError(f"frame {number} lies beyond the stored pixel data")
    return data


def _extended_offsets(layout: Layout) -> tuple[bytes, bytes] | None:
    header = layout.header
    if "ExtendedOffsetTable" in header and "ExtendedOffsetTableLengths" in header:
        return bytes(header.ExtendedOffsetTable), bytes(header.ExtendedOffsetTableLengths)
    return None


def encapsulated_frame(stream: BinaryIO, layout: Layout, number: int) -> bytes:
    """Frame `number` (from 1) of encapsulated pixel data, as stored (its fragments joined)."""
    stream.seek(layout.offset)
    return get_frame(
        stream,
        number - 1,
        extended_offsets=_extended_offsets(layout),
        number_of_frames=layout.frame_count,
    )


def check_decodable(layout: Layout, limit: int, *, frames: int | None = None) -> None:
    """CannotDecode unless `layout`'s pixel data (or that many `frames` of it) can be
    decompressed within `limit` bytes."""
    syntax = layout.transfer_syntax
    if not layout.encapsulated:
        raise CannotDecode(f"pixel data in {UID(syntax).name or syntax} is not compressed")
    if not decodable(syntax):
        raise CannotDecode(f"no decoder here for {UID(syntax).name or syntax}")
    size = layout.decoded_frame_bytes() * (layout.frame_count if frames is None else frames)
    if size <= 0:
        raise CannotDecode("the Image Pixel attributes (rows, columns, bits) are missing")
    if size > limit:
        raise CannotDecode(
            f"decompressed it would be {size} bytes, over the {limit} bytes allowed "
            "([server] max_decompressed_bytes); ask for transfer-syntax=* to get it as stored"
        )


def decode_frame(stream: BinaryIO, layout: Layout, number: int) -> tuple[bytes, dict[str, Any]]:
    """Frame `number` (from 1) decoded: its bytes (little endian, colour-by-pixel) and the
    decoder's description of them (photometric interpretation, planar configuration)."""
    stream.seek(layout.offset)
    decoder = get_decoder(UID(layout.transfer_syntax))
    opts = layout.options()
    opts["extended_offsets"] = _extended_offsets(layout)
    opts["as_rgb"] = True
    array, pixel = decoder.as_array(stream, index=number - 1, **opts)
    return _little_endian(array), dict(pixel)


def _little_endian(array: Any) -> bytes:
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    data: bytes = little.tobytes()
    return data


def _marker_segment(stream: bytes, marker: bytes) -> bytes | None:
    """The body of the first `marker` segment (after its 2-byte length) of a JPEG family code
    stream's header, or None. Segments are walked by their lengths, not searched for."""
    position = 2  # after SOI / SOC
    while position + 4 <= len(stream) and stream[position] == 0xFF:
        code = stream[position : position + 2]
        (length,) = struct.unpack(">H", stream[position + 2 : position + 4])
        if code == marker:
            return stream[position + 4 : position + 2 + length]
        if code in (b"\xff\x93", b"\xff\xd9"):  # SOD / EOI: the header is over
            return None
        position += 2 + length
    return None


def lossy_method(transfer_syntax: str, first_frame: bytes) -> str | None:
    """The Lossy Image Compression Method of data that `first_frame` shows to be lossy
    (PS3.3 C.7.6.1.1.5.1), or None: JPEG always; JPEG 2000 / HTJ2K when their COD segment
    names the irreversible 9-7 wavelet (ISO 15444-1 A.6.1; a reversible one may still have
    been truncated, which the code stream does not say); JPEG-LS when its scan's NEAR is
    not 0 (ISO 14495-1 C.2.3)."""
    if transfer_syntax in ALWAYS_LOSSY:
        return ALWAYS_LOSSY[transfer_syntax]
    if transfer_syntax in _J2K:
        start = first_frame.find(b"\xff\x4f\xff\x51")  # SOC SIZ: a raw code stream (or in JP2)
        cod = _marker_segment(first_frame[start:], b"\xff\x52") if start >= 0 else None
        if cod is None or len(cod) < 10 or cod[9] != 0:  # SPcod's transformation: 0 = 9-7
            return None
        high_throughput = transfer_syntax.startswith("1.2.840.10008.1.2.4.20")
        return "ISO_15444_15" if high_throughput else "ISO_15444_1"
    if transfer_syntax == _JLS_NEAR:
        sos = _marker_segment(first_frame, b"\xff\xda")
        if sos is not None and len(sos) >= 1:
            near_at = 1 + 2 * sos[0]
            if len(sos) > near_at and sos[near_at] > 0:
                return "ISO_14495_1"
    return None


def decompressed_attributes(
    layout: Layout, pixel: dict[str, Any], target: str, method: str | None = None
) -> Dataset:
    """The header of the decompressed instance in `target` (element copies: `layout` stays
    as read); `method`: the data were lossy-compressed so (`lossy_method`)."""
    header = Dataset()
    for element in layout.header:
        header.add(copy.copy(element))
    meta = FileMetaDataset(layout.header.file_meta)
    meta.TransferSyntaxUID = UID(target)
    header.file_meta = meta
    header.PhotometricInterpretation = str(pixel["photometric_interpretation"])
    if int(header.get("SamplesPerPixel", 1) or 1) > 1:
        header.PlanarConfiguration = int(pixel.get("planar_configuration", 0))
    if method is not None:
        header.LossyImageCompression = "01"
        methods = list(header.get("LossyImageCompressionMethod", []) or [])
        if "LossyImageCompressionMethod" in header and isinstance(
            header.LossyImageCompressionMethod, str
        ):
            methods = [header.LossyImageCompressionMethod]
        if method not in methods:
            header.LossyImageCompressionMethod = [*methods, method] if methods else method
    return header


def _pixel_element_header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, number, length)
    return struct.pack("<HH2sHI", group, number, vr.encode("ascii"), 0, length)


def _encoded_header(header: Dataset, target: str, *, part10: bool) -> bytes:
    if not part10:
        return encode_dataset(header, target).getvalue()
    out = BytesIO()
    dcmwrite(out, header, enforce_file_format=True)
    return out.getvalue()


def decompressed_pieces(
    open_stream: Callable[[], BinaryIO], layout: Layout, target: str, *, part10: bool
) -> Generator[bytes, None, None]:
    """The instance decompressed in `target`, piece by piece: header, pixel data element
    header, each frame as it is decoded, the tail. `open_stream` gives the blob again (the
    caller's `layout` came from another reading); it is closed when the pieces end."""
    count = layout.frame_count
    implicit = target == IMPLICIT_LE
    with open_stream() as stream:
        method = lossy_method(layout.transfer_syntax, encapsulated_frame(stream, layout, 1))
        first, pixel = decode_frame(stream, layout, 1)
        header = decompressed_attributes(layout, pixel, target, method)
        bits = int(header.get("BitsAllocated", 8) or 8)
        vr = "OB" if bits <= 8 else "OW"
        total = len(first) * count
        yield _encoded_header(header, target, part10=part10)
        yield _pixel_element_header(PIXEL_DATA, vr, total + total % 2, implicit)
        yield first
        for number in range(2, count + 1):
            data, _ = decode_frame(stream, layout, number)
            if len(data) != len(first):
                raise ValueError(f"frame {number} decoded to another size than frame 1")
            yield data
        if total % 2:
            yield b"\x00"
        if len(layout.tail):
            yield encode_dataset(layout.tail, target).getvalue()


def converted_pieces(
    open_stream: Callable[[], BinaryIO], layout: Layout, target: str, *, part10: bool
) -> Iterator[bytes]:
    """A native instance in the other uncompressed syntax (`target`), piece by piece: the
    header re-encoded by pydicom, the pixel data copied from its byte range in 1 MiB chunks
    (its bytes are the same little-endian words in both), the tail re-encoded."""
    if layout.encapsulated:
        raise ValueError("encapsulated pixel data is decompressed, not converted")
    header = Dataset()
    for element in layout.header:
        header.add(element)
    meta = FileMetaDataset(layout.header.file_meta)
    meta.TransferSyntaxUID = UID(target)
    header.file_meta = meta
    yield _encoded_header(header, target, part10=part10)
    if layout.pixel_tag is not None and layout.length is not None:
        yield _pixel_element_header(
            layout.pixel_tag, layout.pixel_vr, layout.length, target == IMPLICIT_LE
        )
        with open_stream() as stream:
            yield from byte_range(stream, layout.offset, layout.length)
    if len(layout.tail):
        yield encode_dataset(layout.tail, target).getvalue()


def byte_range(stream: BinaryIO, offset: int, length: int) -> Iterator[bytes]:
    """`length` bytes of a seekable `stream` from `offset`, in chunks of up to 1 MiB;
    ValueError when the stream ends first."""
    stream.seek(offset)
    left = length
    while left > 0:
        chunk = stream.read(min(left, _COPY_CHUNK))
        if not chunk:
            raise ValueError("the stored pixel data is shorter than its length")
        left -= len(chunk)
        yield chunk


class DecompressedReader:
    """`InstanceData` over `decompressed_pieces` or `converted_pieces`: `read(size)` until
    b"" (blocking: it reads and decodes), `close`."""

    def __init__(
        self, pieces: Iterator[bytes], transfer_syntax: str, *, first: bytes = b""
    ) -> None:
        """`first`: a piece already taken from `pieces` (read before the rest)."""
        self.transfer_syntax = transfer_syntax
        self._pieces = pieces
        self._buffer = memoryview(first)

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            return bytes(self._buffer) + b"".join(self._pieces)
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._buffer = memoryview(piece)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return bytes(out)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)  # a generator: closes the blob
        if callable(close):
            close()
        self._buffer = memoryview(b"")
