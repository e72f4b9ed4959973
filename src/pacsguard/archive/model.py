"""Values the archive's parts exchange: stored-instance records, query levels, outcomes.

These are the contracts between the archive service, the index and the blob store; they hold
what the index needs to answer C-FIND / QIDO-RS and to locate blobs, nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pacsguard.dicom.levels import Level, QueryRoot

#: A DICOM UID as we accept it from the wire (PS3.5 9.1): digits and dots, at most 64 chars.
UID_PATTERN: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    """True for a syntactically valid UID; the only UIDs allowed to become keys or paths."""
    return 0 < len(value) <= 64 and bool(UID_PATTERN.match(value)) and ".." not in value


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One stored instance: the attributes the index keeps, and where its blob is.

    Text attributes are stored as received (already decoded strings); empty string when absent.
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    study_description: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""
    transfer_syntax_uid: str = ""
    #: Blob store key (derived from validated UIDs), byte size and SHA-256 of the stored bytes.
    blob_key: str = ""
    size: int = 0
    sha256: str = ""


class AddOutcome(StrEnum):
    """What the index did with an `add` (the duplicate policy is documented in the service)."""

    INSERTED = "inserted"
    #: Same SOP Instance UID and identical bytes: nothing changes (idempotent retry).
    DUPLICATE_IDENTICAL = "duplicate-identical"
    #: Same SOP Instance UID, different bytes: the index keeps the first; the service refuses.
    DUPLICATE_CONFLICT = "duplicate-conflict"


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A C-FIND / QIDO-RS query reduced to plain values.

    `keys` maps DICOM keywords to the matching value as received (empty string = return key,
    universal match). Count attributes (NumberOfStudyRelatedInstances...) are return keys the
    index computes. `offset` and `limit` page through the matches in a stable order.
    """

    root: QueryRoot
    level: Level
    keys: dict[str, str]
    limit: int = 1000
    #: Matches skipped first, in the engine's stable order (QIDO-RS `offset`).
    offset: int = 0


class QueryError(ValueError):
    """A query the index cannot run as asked: a level the root lacks, a malformed date range,
    a wildcard in a UID. The DIMSE front end answers 0xA900 (identifier does not match SOP
    class) or 0xC000 (unable to process); the web front end answers 400.

    The message (`str`) may quote the value asked for, for the requester's own answer; a
    query value may be a patient's name, ID or birth date, so audit lines and logs use
    `reason`, which never quotes it."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


class HierarchyError(ValueError):
    """An instance whose UIDs contradict what the index already holds: its series belongs to
    another study, or its study to another patient. The index refuses it and stays unchanged."""


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute of a query match, typed: its keyword, tag, VR and values (none: present
    but empty, a return key without a value). Text is Unicode, as decoded at ingest; IS values
    are ints (a stored IS that is not a number stays text); a PN value keeps its
    '='-separated component groups. DIMSE identifiers and DICOM JSON are both built from it."""

    keyword: str
    tag: int
    vr: str
    values: tuple[str | int, ...] = ()

    @property
    def text(self) -> str:
        """The values as DICOM encodes them in one element: joined by backslashes."""
        return "\\".join(str(v) for v in self.values)


#: The Specific Character Set term that represents any Unicode text (PS3.3 C.12.1.1.2).
UTF8_CHARSET: Final = "ISO_IR 192"


@dataclass(frozen=True, slots=True)
class Match:
    """One entity matching a query, at the query's level, with its returned attributes."""

    level: Level
    attributes: tuple[Attribute, ...]

    def get(self, keyword: str) -> Attribute | None:
        return next((a for a in self.attributes if a.keyword == keyword), None)

    @property
    def character_set(self) -> tuple[str, ...]:
        """The Specific Character Set that represents every value as it is: () (the default
        repertoire) when all text is ASCII, else UTF-8. A DIMSE response may declare another
        one the querier asked in (`dimse.charsets.response_character_set`)."""
        ascii_only = all(str(v).isascii() for a in self.attributes for v in a.values)
        return () if ascii_only else (UTF8_CHARSET,)


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """One page of matches, in the query engine's stable order, and whether more follow it
    (`more`: the answer past `offset + len(matches)` is not empty)."""

    matches: tuple[Match, ...]
    more: bool = False

    def __iter__(self) -> Iterator[Match]:
        return iter(self.matches)

    def __len__(self) -> int:
        return len(self.matches)
