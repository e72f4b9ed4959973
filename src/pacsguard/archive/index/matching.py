"""DICOM attribute matching (PS3.4 C.2.2.2) reduced to terms, then to SQL conditions.

`parse` turns one query value into terms, or None for universal matching (empty or only `*`);
`condition` turns the terms into a SQL condition on one column. Both are pure.

- Single value: equality, bytewise (case-sensitive), except person names (PN): those compare
  case-insensitively, as Orthanc and dcm4chee do by default, against a case-folded copy of the
  stored name (`normalize_name`).
- Wildcards `*` and `?` (not for UIDs, numbers, dates and times): LIKE on PostgreSQL, with `%`,
  `_` and the escape character itself escaped; GLOB on SQLite, whose LIKE ignores ASCII case.
- Ranges `A-B`, `A-`, `-B` for DA, TM and DT, and single dates and times, compared at the
  query's precision: `-1200` keeps 12:00:59. Empty stored values never match a range.
- Lists: backslash-separated values match if any one does (UID lists, PS3.4 C.2.2.2.2, and
  multiple-value matching for the other kinds).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sqlalchemy import and_, false, or_
from sqlalchemy.sql.elements import ColumnElement

from pacsguard.archive.model import QueryError, is_valid_uid

#: LIKE's escape character; a split query value never contains it, but it is escaped anyway.
LIKE_ESCAPE: Final = "\\"
#: Appended to a range's upper bound: above every character a DA/TM/DT value may hold, so
#: `col <= high + "~"` keeps every value whose prefix is at most `high`.
_ABOVE: Final = "~"
#: A query value may list at most this many alternatives.
MAX_ALTERNATIVES: Final = 1000

_DATE: Final = re.compile(r"^[0-9]{1,8}$")
_TIME: Final = re.compile(r"^[0-9]{1,6}(\.[0-9]{0,6})?$")
_DATETIME: Final = re.compile(r"^[0-9]{1,14}(\.[0-9]{0,6})?$")
_NUMBER: Final = re.compile(r"^[+-]?[0-9]{1,12}$")


class Kind(StrEnum):
    """How an attribute is matched, by its value representation."""

    TEXT = "text"  # AE, CS, LO, SH...: single value, wildcards, lists
    NAME = "name"  # PN: like TEXT, case-insensitive
    DATE = "date"  # DA: single value or range
    TIME = "time"  # TM: single value or range
    DATETIME = "datetime"  # DT: single value or range (no UTC offsets)
    UID = "uid"  # UI: single value or list, no wildcards
    NUMBER = "number"  # IS: integer equality, no wildcards


@dataclass(frozen=True, slots=True)
class Equals:
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A DICOM pattern with at least one `*` or `?`."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds at the query's precision; an empty bound is open."""

    low: str
    high: str


Term = Equals | Wildcard | Range

_RANGED: Final = {Kind.DATE: _DATE, Kind.TIME: _TIME, Kind.DATETIME: _DATETIME}


def normalize_name(value: str) -> str:
    """The form person names are compared in: case-folded (`Müller` matches `MÜLLER`)."""
    return value.casefold()


def parse(keyword: str, kind: Kind, raw: str) -> tuple[Term, ...] | None:
    """The terms `raw` asks for, or None for universal matching. Raises QueryError."""
    alternatives = [part.strip() for part in raw.split("\\")]
    alternatives = [part for part in alternatives if part]
    if not alternatives or any(set(part) == {"*"} for part in alternatives):
        return None
    if len(alternatives) > MAX_ALTERNATIVES:
        raise QueryError(f"{keyword}: more than {MAX_ALTERNATIVES} values in one key")
    if kind in _RANGED:
        return tuple(_range(keyword, _RANGED[kind], part) for part in alternatives)
    if kind is Kind.UID:
        bad = [part for part in alternatives if not is_valid_uid(part)]
        if bad:
            raise QueryError(
                f"{keyword}: {bad[0]!r} is not a UID (no wildcards in UID keys)",
                f"{keyword}: not a UID",
            )
        return (Equals(tuple(dict.fromkeys(alternatives))),)
    if kind is Kind.NUMBER:
        return (Equals(tuple(dict.fromkeys(_numbers(keyword, alternatives)))),)
    if kind is Kind.NAME:
        alternatives = [normalize_name(part) for part in alternatives]
    exact = tuple(dict.fromkeys(p for p in alternatives if "*" not in p and "?" not in p))
    patterns = tuple(Wildcard(p) for p in dict.fromkeys(alternatives) if "*" in p or "?" in p)
    return ((Equals(exact),) if exact else ()) + patterns


def _range(keyword: str, shape: re.Pattern[str], text: str) -> Range:
    text = text.replace(":", "")  # ACR-NEMA times: HH:MM:SS
    if text.count("-") > 1:
        raise QueryError(
            f"{keyword}: {text!r} is not a value or a range", f"{keyword}: not a value or a range"
        )
    low, dash, high = text.partition("-")
    low, high = low.strip(), high.strip()
    for bound in (low, high):
        if bound and not shape.match(bound):
            raise QueryError(
                f"{keyword}: {bound!r} is not a valid date/time (no wildcards)",
                f"{keyword}: not a valid date/time",
            )
    if not dash:
        return Range(low, low)
    return Range(low, high)


def _numbers(keyword: str, alternatives: Sequence[str]) -> list[str]:
    values: list[str] = []
    for part in alternatives:
        if not _NUMBER.match(part):
            raise QueryError(
                f"{keyword}: {part!r} is not an integer (no wildcards)",
                f"{keyword}: not an integer",
            )
        values.extend((part, str(int(part))))
    return values


def like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern, with `%`, `_` and the escape escaped."""
    out: list[str] = []
    for char in pattern:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + char)
        else:
            out.append(char)
    return "".join(out)


def glob_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as a SQLite GLOB pattern: `*` and `?` are GLOB's own; `[`
    opens a character class there, so a literal one becomes `[[]`."""
    return pattern.replace("[", "[[]")


def condition(
    column: ColumnElement[str], terms: Sequence[Term], dialect: str
) -> ColumnElement[bool]:
    """`terms` (from `parse`) as one SQL condition on `column`, for dialect `dialect`."""
    parts = [_term(column, term, dialect) for term in terms]
    if not parts:
        return false()
    return parts[0] if len(parts) == 1 else or_(*parts)


def _term(column: ColumnElement[str], term: Term, dialect: str) -> ColumnElement[bool]:
    if isinstance(term, Equals):
        if len(term.values) == 1:
            return column == term.values[0]
        return column.in_(term.values)
    if isinstance(term, Wildcard):
        if dialect == "sqlite":
            return column.bool_op("GLOB")(glob_pattern(term.pattern))
        return column.like(like_pattern(term.pattern), escape=LIKE_ESCAPE)
    bounds: list[ColumnElement[bool]] = [column != ""]
    if term.low:
        bounds.append(column >= term.low)
    if term.high:
        bounds.append(column <= term.high + _ABOVE)
    return and_(*bounds)
