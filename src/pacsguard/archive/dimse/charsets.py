"""Specific Character Set (0008,0005) of C-FIND identifiers: the query's, checked; the response's,
chosen (PS3.4 C.4.1.1.3.1-2, PS3.5 6.1).

A query identifier is decoded by pydicom with the character set it declares (no declaration: the
default repertoire, read as pydicom reads it); `query_character_set` refuses a declaration
pydicom does not know, since its text would be matched as something else.

The index holds Unicode text. Each response identifier declares the character set it is encoded
in (`response_character_set`):
- only default-repertoire (ASCII) values: the query's declaration when it made one, else none
  (PS3.4 C.4.1.1.3.2: included only when expanded or replacement sets may be used);
- other characters: the query's character set when it can represent every value exactly (the
  SCU asked in it, so it reads it), otherwise ISO_IR 192 (UTF-8), which represents everything.
  The SCP may answer in another character set than the SCU's (PS3.4 C.4.1.1.3.2); Orthanc
  plans the same preference. Nothing is replaced by "?" on the way out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from pydicom.charset import STAND_ALONE_ENCODINGS, custom_encoders, python_encoding
from pydicom.dataset import Dataset

UTF8: Final = "ISO_IR 192"
#: Value representations whose text is encoded in the Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "PN", "UC", "UT"})
#: Terms naming the default repertoire: no character beyond ASCII (PS3.3 C.12.1.1.2).
_DEFAULT_TERMS: Final = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


class UnsupportedCharacterSet(ValueError):
    """A query declares a Specific Character Set we cannot decode faithfully."""


def query_character_set(identifier: Dataset) -> tuple[str, ...]:
    """The defined terms the identifier declares ( () for none), each one pydicom decodes.

    Raises UnsupportedCharacterSet for an unknown term (misspellings included: pydicom would
    guess) and for a stand-alone set (ISO_IR 192, GB18030, GBK) combined with others."""
    element = identifier.get("SpecificCharacterSet")
    if element is None:
        return ()
    value = element if isinstance(element, str) else "\\".join(str(v) for v in element)
    terms = tuple(term.strip() for term in value.split("\\"))
    if all(not term for term in terms):
        return ()
    unknown = [term for term in terms if term and term not in python_encoding]
    if unknown:
        raise UnsupportedCharacterSet(f"unsupported Specific Character Set {unknown[0]!r}")
    if len(terms) > 1 and any(term in STAND_ALONE_ENCODINGS for term in terms):
        raise UnsupportedCharacterSet("ISO_IR 192, GB18030 and GBK allow no code extensions")
    return terms


def response_character_set(query: Sequence[str], values: Iterable[str]) -> tuple[str, ...]:
    """The Specific Character Set to encode a response holding `values` (the values of
    `CHARSET_VRS` attributes) in, given the query's declaration `query`; () for none."""
    wide = [value for value in values if not value.isascii()]
    if not wide:
        return tuple(query)
    if query and all(_representable(value, query) for value in wide):
        return tuple(query)
    return (UTF8,)


def _representable(value: str, terms: Sequence[str]) -> bool:
    """Whether every character of `value` is in one of the repertoires `terms` name, as pydicom
    encodes them (its JIS X 0201/0208/0212 encoders included). Per character is what pydicom's
    encoder needs too: with code extensions it switches set wherever the current one fails."""
    codecs = [python_encoding[term] for term in terms if term not in _DEFAULT_TERMS]
    return all(char.isascii() or any(_encodes(char, codec) for codec in codecs) for char in value)


def _encodes(char: str, codec: str) -> bool:
    encoder = custom_encoders.get(codec)
    try:
        if encoder is not None:
            encoder(char, "strict")
        else:
            char.encode(codec)
    except (UnicodeError, ValueError):
        return False
    return True
