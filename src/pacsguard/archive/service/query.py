"""Query: C-FIND and QIDO-RS matches, authorized and audited before the first is released."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

from pacsguard.archive.audit.events import AuditEvent, EventAction, EventOutcome, EventType
from pacsguard.archive.model import QueryRequest
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service._core import ServiceCore, _participant
from pacsguard.errors import AuditLogError


class Queries(ServiceCore):
    """C-FIND / QIDO-RS over the index's one query engine."""

    def query(
        self, principal: Principal, request: QueryRequest
    ) -> Generator[dict[str, str], None, bool]:
        """Matches for a C-FIND / QIDO-RS query, capped by configuration. The audit line (with
        the count) is durable before the first match is released: AuditLogError otherwise.
        Returns (as the generator's value) True when more matches exist than were yielded: the
        answer is incomplete, and the front end must say so."""
        self.require(principal, Action.FIND)
        limit = min(request.limit, self.limits.max_query_results)
        capped = QueryRequest(
            root=request.root,
            level=request.level,
            keys=request.keys,
            limit=limit + 1,  # one more than we return: tells a complete answer from a cut one
        )
        try:
            results = list(self._index.find(capped))  # bounded by the cap (plus one)
        except Exception:
            with contextlib.suppress(AuditLogError):  # the query's own error is the answer
                self._audit_query(principal, request, EventOutcome.SERIOUS_FAILURE, 0, False)
            raise
        truncated = len(results) > limit
        del results[limit:]
        count = len(results)
        self._audit_query(principal, request, EventOutcome.SUCCESS, count, truncated)
        yield from results
        return truncated

    def _audit_query(
        self,
        principal: Principal,
        request: QueryRequest,
        outcome: EventOutcome,
        count: int,
        capped: bool,
    ) -> None:
        self._audit.emit(
            AuditEvent(
                EventType.QUERY,
                EventAction.EXECUTE,
                outcome,
                (_participant(principal),),
                (("query", f"{request.root.value}/{request.level.name}"),),
                {"results": count, "capped": capped},
            )
        )
