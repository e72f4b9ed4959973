"""Query/Retrieve information model vocabulary (PS3.4 C.3), shared by the lab and the archive."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Level(IntEnum):
    """Query/Retrieve levels, ordered from the top of the hierarchy down."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class QueryRoot(StrEnum):
    """The information model: Patient Root or Study Root (which has no PATIENT level)."""

    PATIENT = "patient"
    STUDY = "study"
