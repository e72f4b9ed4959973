"""HTTP authentication: the one place the web front end turns a request into a Principal.

No anonymous access: the gate decides every request (`Gate.authenticate` with an HTTP
`AuthAttempt`: a bearer JWT or one of the archive's API tokens, which name a user whose roles
are the permissions) and counts failures per source and per account in the lockout it shares
with DIMSE. Every request gets its authentication line (`authentication_event`, as the gate
writes it), allowed or refused. A refusal's line is written before the 401. An allowed
request's line is written before the request is served, and the caller waits for it to be
durable before it answers (`authenticate` returns that wait): it is synced with the
operation's own line (the log syncs in order, group commit), not in a sync of its own first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from pacsguard.archive.audit.events import AuditSink
from pacsguard.archive.audit.notify import Waiter, emit_deferred
from pacsguard.archive.security.attempt import AuthAttempt, Transport, http_credentials
from pacsguard.archive.security.gate import Gate, authentication_event
from pacsguard.archive.security.principal import Principal, Rejection
from pacsguard.errors import AuditLogError, AuthenticationError


@dataclass(frozen=True, slots=True)
class HttpCredential:
    """What an HTTP request presents: its Authorization header and where it comes from."""

    authorization: str | None
    address: str
    port: int = 0


def authenticate(
    gate: Gate, audit: AuditSink, credential: HttpCredential
) -> tuple[Principal, Waiter]:
    """The Principal the gate makes of a request (TLS: the listener is HTTPS only) and the
    wait for its authentication line to be durable; AuthenticationError with the gate's
    reason (its line written) when refused; AuditLogError when the line of an allowed
    request cannot be written. Blocking: token files and signatures are read and checked."""
    attempt = AuthAttempt(
        Transport.HTTP,
        credential.address,
        http_credentials(credential.authorization),
        tls=True,
        port=credential.port,
    )
    decision = gate.authenticate(attempt, audit=False)
    event = authentication_event(attempt, decision)
    if isinstance(decision, Rejection):
        with contextlib.suppress(AuditLogError):  # a refusal stands without its line
            audit.emit(event)
        raise AuthenticationError(decision.why)
    return decision, emit_deferred(audit, event)
