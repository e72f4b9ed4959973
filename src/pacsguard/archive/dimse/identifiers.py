"""DIMSE identifiers to archive requests, archive results to identifiers; DIMSE statuses.

Domain outcomes become DICOM statuses in the DIMSE front end only (PS3.4 / PS3.7 Annex C):
0x0124 refused: not authorized; 0xA900 identifier does not match SOP class; 0xC000 unable to
process; 0xA801 move destination unknown; 0xFE00 cancelled.

Character sets (see `charsets`): a query identifier is decoded with its Specific Character Set
and one pydicom does not know is a bad identifier; each response identifier declares the
character set its text is encoded in.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsguard.archive.dimse.charsets import (
    CHARSET_VRS,
    UnsupportedCharacterSet,
    query_character_set,
    response_character_set,
)
from pacsguard.archive.model import Match, QueryRequest
from pacsguard.dicom.levels import Level, QueryRoot

log = logging.getLogger(__name__)

IDENTIFIER_MISMATCH: Final = 0xA900
UNABLE_TO_PROCESS: Final = 0xC000
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
CANCELLED: Final = 0xFE00
PENDING: Final = 0xFF00

_LEVELS: Final = {
    "PATIENT": Level.PATIENT,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.IMAGE,
}
_UNIQUE_KEY: Final = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_NOT_MATCH_KEYS: Final = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


@dataclass(frozen=True, slots=True)
class MoveDestination:
    """Where a C-MOVE sub-association goes, and over TLS when `tls` is set (a client context
    that verifies the destination and presents our certificate)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None


#: Resolves a C-MOVE destination AE title when it is registered for moves (else None).
DestinationLookup = Callable[[str], MoveDestination | None]


class BadIdentifier(ValueError):
    """The identifier cannot be used as a query or retrieve key."""


def root_of(sop_class_uid: str) -> QueryRoot:
    # Patient Root Q/R models are 1.2.840.10008.5.1.4.1.2.1.x, Study Root ...2.2.x (PS3.4 C.6).
    return (
        QueryRoot.PATIENT
        if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.2.1.")
        else (QueryRoot.STUDY)
    )


def query_from_identifier(identifier: Dataset, root: QueryRoot) -> QueryRequest:
    """A QueryRequest from a C-FIND identifier (its text decoded with its Specific Character
    Set, into Unicode); BadIdentifier when unusable, an unknown character set included."""
    declared_character_set(identifier)
    level = _level_of(identifier)
    if root is QueryRoot.STUDY and level is Level.PATIENT:
        raise BadIdentifier("Study Root has no PATIENT level")
    keys: dict[str, str] = {}
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in _NOT_MATCH_KEYS or elem.VR == "SQ":
            continue
        _require_dictionary_vr(elem)
        value = elem.value
        if value is None:
            keys[keyword] = ""
        elif isinstance(value, list | tuple) or (hasattr(value, "__iter__") and elem.VM > 1):
            keys[keyword] = "\\".join(str(v) for v in value)
        else:
            keys[keyword] = str(value)
    return QueryRequest(root=root, level=level, keys=keys)


def _level_of(identifier: Dataset) -> Level:
    if "QueryRetrieveLevel" not in identifier:
        raise BadIdentifier("missing QueryRetrieveLevel")
    elem = identifier["QueryRetrieveLevel"]
    _require_dictionary_vr(elem)  # as a sequence, str() would parse its items (found by fuzzing)
    level = _LEVELS.get(str(elem.value or "").strip().upper())
    if level is None:
        raise BadIdentifier("unknown QueryRetrieveLevel")
    return level


def _require_dictionary_vr(elem: DataElement) -> None:
    """A key sent with another VR than its dictionary's (bytes for a UID, say) would become the
    text of a Python repr (found by fuzzing): refuse it."""
    expected, vr = dictionary_VR(elem.tag), str(elem.VR)
    if vr != expected and vr not in expected.split(" or "):  # "US or SS" may stay unresolved
        raise BadIdentifier(f"{elem.keyword} has VR {vr}, not {expected}")


def retrieve_keys(identifier: Dataset) -> tuple[Level, list[str]]:
    """(level, unique key values) of a C-GET / C-MOVE identifier."""
    level = _level_of(identifier)
    keyword = _UNIQUE_KEY[level]
    if keyword not in identifier:
        raise BadIdentifier(f"{keyword} is required at {level.name} level")
    elem = identifier[keyword]
    _require_dictionary_vr(elem)
    raw = elem.value
    values = [str(v).strip() for v in (raw if isinstance(raw, MultiValue | list) else [raw])]
    values = [v for p in values for v in p.split("\\") if v]
    if not values:
        raise BadIdentifier(f"{_UNIQUE_KEY[level]} is empty")
    return level, values


def declared_character_set(identifier: Dataset) -> tuple[str, ...]:
    """The Specific Character Set terms a query identifier declares; BadIdentifier when
    pydicom cannot decode them faithfully."""
    try:
        return query_character_set(identifier)
    except UnsupportedCharacterSet as exc:
        raise BadIdentifier(str(exc)) from None


def response_identifier(
    request: QueryRequest, match: Match, query_charset: Sequence[str] = ()
) -> Dataset:
    """A C-FIND response identifier for one match (`model.Match`, typed by the service), its
    text encoded in a declared character set (`charsets.response_character_set`;
    `query_charset` is what the query declared).

    Values are sent as the index holds them, without pydicom's validation (its warnings
    would quote patient names into the application log). A value outside the default repertoire
    in an attribute whose VR cannot carry one (CS, DA, UI...: an object stored with such bytes)
    is returned empty rather than mis-encoded."""
    elements = [((a.tag, a.vr), a.text) for a in match.attributes]
    ds = Dataset()
    ds.QueryRetrieveLevel = request.level.name
    charset = response_character_set(
        query_charset, (value for (_, vr), value in elements if vr in CHARSET_VRS)
    )
    if charset:
        ds.SpecificCharacterSet = charset[0] if len(charset) == 1 else list(charset)
    for (tag, vr), value in elements:
        if vr not in CHARSET_VRS and not value.isascii():
            value = ""
        try:
            ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
        except (ValueError, TypeError):
            continue
    return ds
