"""Query: C-FIND and QIDO-RS over the one query engine, authorized before anything is read.

`query` authorizes first (Denied, audited), runs one page of the index's stable order
(`offset`, `limit` capped by `[server] find_result_cap`), writes the audit line (with the
count) and only then returns the matches: AuditLogError otherwise, and nothing is released.
Matches come back typed (`model.Match`: keyword, tag, VR, values, character set), from which
the DIMSE front end builds identifiers (`dimse.identifiers.response_identifier`) and the web
front end DICOM JSON (`archive.dicom_json`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import replace

from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacsguard.archive.audit.events import AuditEvent, EventAction, EventOutcome, EventType
from pacsguard.archive.model import Attribute, Match, QueryAnswer, QueryRequest
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service._core import ServiceCore, _participant
from pacsguard.dicom.levels import Level
from pacsguard.errors import AuditLogError

#: Returned by C-FIND responses themselves; not an attribute of the match.
_NOT_RETURNED = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


@functools.lru_cache(maxsize=512)
def element_of(keyword: str) -> tuple[int, str] | None:
    """(tag, VR) of a dictionary keyword; None for anything else."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    try:
        return int(tag), str(dictionary_VR(tag))
    except KeyError:
        return None


def _values(vr: str, raw: str) -> tuple[str | int, ...]:
    if raw == "":
        return ()
    parts = raw.split("\\")
    if vr != "IS":
        return tuple(parts)
    typed: list[str | int] = []
    for part in parts:
        try:
            typed.append(int(part.strip()))
        except ValueError:
            typed.append(part)  # not a number as stored: kept as text, never guessed
    return tuple(typed)


def match_from_row(level: Level, row: Mapping[str, str]) -> Match:
    """A typed match from an index row (keyword -> text as stored, values joined by
    backslashes). Keywords outside the DICOM dictionary are dropped; so is QueryRetrieveLevel,
    which is the response's own."""
    attributes: list[Attribute] = []
    for keyword, raw in row.items():
        element = None if keyword in _NOT_RETURNED else element_of(keyword)
        if element is None:
            continue
        tag, vr = element
        attributes.append(Attribute(keyword, tag, vr, _values(vr, raw)))
    return Match(level, tuple(attributes))


class Queries(ServiceCore):
    """C-FIND / QIDO-RS over the index's one query engine."""

    def query(self, principal: Principal, request: QueryRequest) -> QueryAnswer:
        """One page of matches for a C-FIND / QIDO-RS query: `request.offset` skipped, at most
        `request.limit` (capped by configuration). Denied before the index is read; the audit
        line (with the count) is durable before the page is returned: AuditLogError
        otherwise. `QueryAnswer.more` says that matches follow the page: for C-FIND the
        answer is incomplete, and the front end must say so."""
        self.require(principal, Action.FIND)
        limit = min(request.limit, self.limits.max_query_results)
        # One more than we return: tells a complete answer from a cut one.
        page = replace(request, limit=limit + 1)
        try:
            rows = list(self._index.find(page))  # bounded by the cap (plus one)
        except Exception:
            with contextlib.suppress(AuditLogError):  # the query's own error is the answer
                self._audit_query(principal, request, EventOutcome.SERIOUS_FAILURE, 0, False)
            raise
        more = len(rows) > limit
        matches = tuple(match_from_row(request.level, row) for row in rows[:limit])
        self._audit_query(principal, request, EventOutcome.SUCCESS, len(matches), more)
        return QueryAnswer(matches, more)

    def _audit_query(
        self,
        principal: Principal,
        request: QueryRequest,
        outcome: EventOutcome,
        count: int,
        capped: bool,
    ) -> None:
        detail: dict[str, str | int | bool] = {"results": count, "capped": capped}
        if request.offset:
            detail["offset"] = request.offset
        self._audit.emit(
            AuditEvent(
                EventType.QUERY,
                EventAction.EXECUTE,
                outcome,
                (_participant(principal),),
                (("query", f"{request.root.value}/{request.level.name}"),),
                detail,
            )
        )
