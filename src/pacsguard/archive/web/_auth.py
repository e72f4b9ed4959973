"""HTTP authentication: the one place the web front end turns a request into a Principal.

No anonymous access: the gate decides every request (`Gate.authenticate` with an HTTP
`AuthAttempt`: a bearer JWT or one of the archive's API tokens, which name a user whose roles
are the permissions), counts failures per source and per account in the lockout it shares with
DIMSE, and writes the authentication line. The web front end only carries the request's
facts to it and turns a Rejection into 401.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacsguard.archive.security.attempt import AuthAttempt, Transport, http_credentials
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.security.principal import Principal, Rejection
from pacsguard.errors import AuthenticationError


@dataclass(frozen=True, slots=True)
class HttpCredential:
    """What an HTTP request presents: its Authorization header and where it comes from."""

    authorization: str | None
    address: str
    port: int = 0


def authenticate(gate: Gate, credential: HttpCredential) -> Principal:
    """The Principal the gate makes of a request (TLS: the listener is HTTPS only), or
    AuthenticationError with the gate's reason (audited by the gate; for the log only).
    Blocking: token files and signatures are read and checked."""
    attempt = AuthAttempt(
        Transport.HTTP,
        credential.address,
        http_credentials(credential.authorization),
        tls=True,
        port=credential.port,
    )
    decision = gate.authenticate(attempt)
    if isinstance(decision, Rejection):
        raise AuthenticationError(decision.why)
    return decision
