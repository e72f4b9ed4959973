"""Read the top-level text attributes an archive indexes from a Part 10 object, quickly.

`pydicom.dcmread(stop_before_pixels=True)` builds a `Dataset` of every element and costs about
0.7 ms for a small CT image (measured); ingest needs twenty strings. `read_header` walks the
element structure of the common transfer syntaxes itself (Implicit and Explicit VR Little
Endian, and the encapsulated ones, whose data sets are Explicit VR Little Endian), checks that
every element fits in the object, and keeps only the wanted values. Anything else -- Big Endian,
Deflate, character sets other than `PLAIN_CHARSETS` (ISO 2022 code extensions, Japanese,
Korean, Chinese...), a wanted value holding an escape sequence, a structure it cannot follow --
returns None and the caller uses pydicom (whose `pydicom.charset` decodes those), which then
decides whether the object is readable. The result is compared with pydicom's in the unit tests.

Text without a declared Specific Character Set is read the way pydicom reads it: the default
repertoire (ISO_IR 6) as ISO 8859-1, so a stray byte above 0x7F from a sender that forgot to
declare Latin-1 keeps its letter instead of becoming U+FFFD (PS3.5 6.1.2.1 allows only ASCII
there; pydicom's tolerance is the one the index follows, so both paths store the same text).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Collection
from typing import Final

from pydicom.datadict import tag_for_keyword

_IMPLICIT_LE: Final = "1.2.840.10008.1.2"
_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
_DEFLATE: Final = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Every VR of PS3.5 Table 6.2-1; anything else means we lost our place (pydicom decides).
_SHORT_VRS: Final = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
     b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)  # fmt: skip
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_EXPLICIT: Final = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length
_U32: Final = struct.Struct("<I")
_CHARSET: Final = 0x00080005
_TRANSFER_SYNTAX: Final = 0x00020010
#: Character sets whose bytes decode directly with one Python codec, as pydicom decodes them
#: (`pydicom.charset.python_encoding`: no value and ISO_IR 6 are read as ISO 8859-1); any
#: other Specific Character Set goes through pydicom (PS3.5 6.1.2.5.3, PS3.3 C.12.1.1.2).
PLAIN_CHARSETS: Final = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                         "ISO_IR 192": "utf-8"}  # fmt: skip
#: ESC starts an ISO 2022 escape sequence (PS3.5 6.1.2.5.3): pydicom splits the value there.
ESCAPE: Final = b"\x1b"
#: Nesting deeper than this is refused (a hostile object cannot recurse us out of stack).
_MAX_DEPTH: Final = 32


class _Unreadable(Exception):
    """The fast path cannot follow this object; pydicom decides."""


def _text(raw: bytes, encoding: str) -> str:
    return raw.decode(encoding, "replace").strip(" \x00")


class _Walker:
    def __init__(self, data: memoryview, explicit: bool) -> None:
        self.data = data
        self.explicit = explicit

    def element(self, offset: int) -> tuple[int, int, int]:
        """(tag, value offset, value length) of the element at `offset`."""
        data = self.data
        if offset + 8 > len(data):
            raise _Unreadable("element header past the end")
        group, number, vr, short_length = _EXPLICIT.unpack_from(data, offset)
        tag = (group << 16) | number
        if group == 0xFFFE or not self.explicit:  # items and delimiters: always 4-byte lengths
            return tag, offset + 8, _U32.unpack_from(data, offset + 4)[0]
        if vr in _SHORT_VRS:
            return tag, offset + 8, short_length
        if vr not in _LONG_VRS:
            raise _Unreadable("not a VR")
        if offset + 12 > len(data):
            raise _Unreadable("element header past the end")
        return tag, offset + 12, _U32.unpack_from(data, offset + 8)[0]

    def skip_undefined(self, offset: int, depth: int) -> int:
        """Offset just past an undefined-length sequence (or encapsulated value) at `offset`."""
        if depth > _MAX_DEPTH:
            raise _Unreadable("nesting too deep")
        while True:
            tag, value, length = self.element(offset)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise _Unreadable("expected an item")
            if length == _UNDEFINED:
                offset = self.skip_items_data_set(value, depth + 1)
            else:
                offset = self.end_of(value, length)

    def skip_items_data_set(self, offset: int, depth: int) -> int:
        """Offset just past the item delimiter ending an undefined-length item."""
        while True:
            tag, value, length = self.element(offset)
            if tag == _ITEM_END:
                return value
            offset = self.skip_value(value, length, depth)

    def skip_value(self, value: int, length: int, depth: int) -> int:
        if length == _UNDEFINED:
            return self.skip_undefined(value, depth + 1)
        return self.end_of(value, length)

    def end_of(self, value: int, length: int) -> int:
        end = value + length
        if end > len(self.data):
            raise _Unreadable("value runs past the end of the object")
        return end


def _meta(view: memoryview) -> tuple[str, int]:
    """Transfer Syntax UID and the offset of the data set, from the File Meta Information."""
    if len(view) < 144 or bytes(view[128:132]) != b"DICM":
        raise _Unreadable("no Part 10 preamble")
    walker = _Walker(view, explicit=True)
    tag, value, length = walker.element(132)
    if tag != 0x00020000 or length != 4:
        raise _Unreadable("no group length")
    end = walker.end_of(value, 4) + _U32.unpack_from(view, value)[0]
    offset = value + 4
    transfer_syntax = ""
    while offset < end:
        tag, value, length = walker.element(offset)
        offset = walker.end_of(value, length)
        if tag == _TRANSFER_SYNTAX:
            transfer_syntax = _text(bytes(view[value:offset]), "ascii")
    if offset != end:
        raise _Unreadable("File Meta Information length disagrees with its elements")
    return transfer_syntax, end


@functools.lru_cache(maxsize=8)
def _tags(keywords: tuple[str, ...]) -> tuple[dict[int, str], frozenset[int]]:
    """Tag -> keyword for `keywords`, and the tags to keep (those plus the character set)."""
    wanted = {tag_for_keyword(k): k for k in keywords}
    if None in wanted:
        raise ValueError("unknown keyword")
    tags = {int(tag): k for tag, k in wanted.items() if tag is not None}
    return tags, frozenset({*tags, _CHARSET})


def read_header(data: bytes, keywords: Collection[str]) -> dict[str, str] | None:
    """The top-level text values of `keywords` (absent ones as ""), plus "TransferSyntaxUID";
    None when the fast path cannot read this object (use pydicom)."""
    wanted, keep = _tags(tuple(keywords))
    view = memoryview(data)
    try:
        transfer_syntax, offset = _meta(view)
        if transfer_syntax == _BIG_ENDIAN or transfer_syntax in _DEFLATE or not transfer_syntax:
            return None
        walker = _Walker(view, explicit=transfer_syntax != _IMPLICIT_LE)
        raw: dict[int, bytes] = {}
        end = len(view)
        while offset < end:
            tag, value, length = walker.element(offset)
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise _Unreadable("delimiter at the top level")
            offset = walker.skip_value(value, length, 0)
            if tag in keep and length != _UNDEFINED:
                raw[tag] = bytes(view[value:offset])
    except (_Unreadable, struct.error):
        return None
    encoding = PLAIN_CHARSETS.get(_text(raw.get(_CHARSET, b""), "ascii"))
    if encoding is None or any(ESCAPE in value for value in raw.values()):
        return None
    values = {k: _text(raw[t], encoding) if t in raw else "" for t, k in wanted.items()}
    values["TransferSyntaxUID"] = transfer_syntax
    return values
