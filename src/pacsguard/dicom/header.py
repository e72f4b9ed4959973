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
import re
import struct
from collections.abc import Collection
from typing import Final

from pydicom.datadict import dictionary_VR, tag_for_keyword

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
_ITEM_BYTES: Final = b"\xfe\xff\x00\xe0"
#: Pixel data tags: where pydicom's dcmread(stop_before_pixels=True) stops.
_PIXEL_TAGS: Final = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
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
_UID: Final = re.compile(r"[0-9.]{1,64}")
#: Nesting deeper than this is refused (a hostile object cannot recurse us out of stack).
_MAX_DEPTH: Final = 32


class _Unreadable(Exception):
    """The fast path cannot follow this object; pydicom decides."""


def _text(raw: bytes, encoding: str) -> str:
    return raw.decode(encoding, "replace").strip(" \x00")


class _Walker:
    """Follows the element structure as pydicom's reader does (filereader.data_element_generator):
    undefined-length sequences are parsed item by item, their defined-length items element by
    element; other undefined-length values are encapsulated fragments; defined-length values
    are skipped whole (pydicom reads them lazily)."""

    def __init__(self, data: memoryview, explicit: bool) -> None:
        self.data = data
        self.explicit = explicit

    def element(self, offset: int) -> tuple[int, bytes, int, int]:
        """(tag, VR (b"" when implicit), value offset, value length) of the element at `offset`."""
        data = self.data
        if offset + 8 > len(data):
            raise _Unreadable("element header past the end")
        group, number, vr, short_length = _EXPLICIT.unpack_from(data, offset)
        tag = (group << 16) | number
        if group == 0xFFFE or not self.explicit:  # items and delimiters: always 4-byte lengths
            length = _U32.unpack_from(data, offset + 4)[0]
            if length and tag in (_ITEM_END, _SEQUENCE_END):
                # PS3.5 7.5: delimiters have length 0; pydicom reads other bytes as a VR and
                # loses its place (found by fuzzing)
                raise _Unreadable("a delimiter with a length")
            return tag, b"", offset + 8, length
        if vr in _SHORT_VRS:
            return tag, vr, offset + 8, short_length
        if vr not in _LONG_VRS:
            raise _Unreadable("not a VR")
        if offset + 12 > len(data):
            raise _Unreadable("element header past the end")
        return tag, vr, offset + 12, _U32.unpack_from(data, offset + 8)[0]

    def skip_value(self, tag: int, vr: bytes, value: int, length: int, depth: int) -> int:
        """Offset just past the value of an element."""
        if length != _UNDEFINED:
            return self.end_of(value, length)
        if depth > _MAX_DEPTH:
            raise _Unreadable("nesting too deep")
        if self._is_sequence(tag, vr, value):
            return self.skip_sequence(value, depth + 1)
        return self.skip_fragments(value)

    def _is_sequence(self, tag: int, vr: bytes, value: int) -> bool:
        if self.explicit:
            if vr == b"UN":  # pydicom reads it as a sequence of its own making
                raise _Unreadable("undefined-length UN")
            return vr == b"SQ"
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:  # private or unknown: pydicom looks for an item (as here)
            return bytes(self.data[value : value + 4]) == _ITEM_BYTES

    def skip_sequence(self, offset: int, depth: int) -> int:
        """Offset just past the delimiter of an undefined-length sequence at `offset`."""
        while True:
            tag, _vr, value, length = self.element(offset)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise _Unreadable("expected an item")
            if length == _UNDEFINED:
                offset = self.skip_items_data_set(value, depth)
            else:
                offset = self.walk_data_set(value, self.end_of(value, length), depth)

    def skip_items_data_set(self, offset: int, depth: int) -> int:
        """Offset just past the item delimiter ending an undefined-length item."""
        while True:
            tag, vr, value, length = self.element(offset)
            if tag == _ITEM_END:
                return value
            if tag in (_ITEM, _SEQUENCE_END):
                raise _Unreadable("delimiter inside an item")
            offset = self.skip_value(tag, vr, value, length, depth)

    def walk_data_set(self, offset: int, end: int, depth: int) -> int:
        """The elements of a defined-length item, which must end exactly at `end`."""
        while offset < end:
            tag, vr, value, length = self.element(offset)
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise _Unreadable("delimiter inside a defined-length item")
            offset = self.skip_value(tag, vr, value, length, depth)
        if offset != end:
            raise _Unreadable("an element runs past the end of its item")
        return end

    def skip_fragments(self, offset: int) -> int:
        """Offset past encapsulated fragments (PS3.5 A.4): defined-length items, a delimiter."""
        while True:
            tag, _vr, value, length = self.element(offset)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM or length == _UNDEFINED:
                raise _Unreadable("expected a fragment")
            offset = self.end_of(value, length)

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
    tag, _vr, value, length = walker.element(132)
    if tag != 0x00020000 or length != 4:
        raise _Unreadable("no group length")
    end = walker.end_of(value, 4) + _U32.unpack_from(view, value)[0]
    offset = value + 4
    transfer_syntax = ""
    while offset < end:
        tag, vr, value, length = walker.element(offset)
        if tag >> 16 != 0x0002:  # pydicom ends the File Meta there, whatever its length says
            raise _Unreadable("File Meta Information with an element outside group 0002")
        offset = walker.end_of(value, length)
        if tag == _TRANSFER_SYNTAX:
            if vr != b"UI":  # pydicom reads the value as its VR says (found by fuzzing)
                raise _Unreadable("Transfer Syntax UID with another VR")
            # only trailing padding: pydicom keeps a leading NUL, and the UID check then fails
            transfer_syntax = bytes(view[value:offset]).rstrip(b" \x00").decode("ascii", "replace")
    if offset != end:
        raise _Unreadable("File Meta Information length disagrees with its elements")
    if bytes(view[end : end + 2]) == b"\x02\x00":  # pydicom reads on while in group 0002
        raise _Unreadable("group 0002 elements past the File Meta group length")
    return transfer_syntax, end


def file_meta_end(data: bytes) -> int | None:
    """Offset of the data set in `data` (a preamble, "DICM" and the File Meta Information
    group), or None when the group's elements do not exactly fill its stated length."""
    try:
        return _meta(memoryview(data))[1]
    except (_Unreadable, struct.error):
        return None


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
        if transfer_syntax == _BIG_ENDIAN or transfer_syntax in _DEFLATE:
            return None
        if not _UID.fullmatch(transfer_syntax):  # pydicom reads such bytes its own way
            return None
        walker = _Walker(view, explicit=transfer_syntax != _IMPLICIT_LE)
        raw: dict[int, bytes] = {}
        end = len(view)
        past_pixels = False
        while offset < end:
            tag, vr, value, length = walker.element(offset)
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise _Unreadable("delimiter at the top level")
            # pydicom (stop_before_pixels) reads nothing from here on; we check the structure
            past_pixels = past_pixels or tag in _PIXEL_TAGS
            offset = walker.skip_value(tag, vr, value, length, 0)
            if tag in keep and length != _UNDEFINED and not past_pixels:
                raw[tag] = bytes(view[value:offset])
                if tag == _CHARSET and walker.explicit and vr not in (b"CS", b"UN"):
                    raise _Unreadable("Specific Character Set with another VR")  # pydicom fails
    except (_Unreadable, struct.error):
        return None
    encoding = PLAIN_CHARSETS.get(_text(raw.get(_CHARSET, b""), "ascii"))
    if encoding is None or any(ESCAPE in value for value in raw.values()):
        return None
    values = {k: _text(raw[t], encoding) if t in raw else "" for t, k in wanted.items()}
    values["TransferSyntaxUID"] = transfer_syntax
    return values
