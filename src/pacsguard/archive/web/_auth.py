"""HTTP authentication: the one place the web front end turns a request into a Principal.

No anonymous access: every request carries ``Authorization: Bearer <token>``, either an API
token from `pacsguard token issue` (``pgt_...``, `archive.tokens`) or a JWT the gate verifies
(`Gate.verify_token`: signature, exp, iss, aud, sub). The token names a user of the
configuration; the user's roles give the permissions, the same ones DIMSE uses (find for
QIDO-RS, get for WADO-RS, store for STOW-RS), and the service checks them per call.

Interim: until the gate authenticates every transport itself (issue 10, deliverable 1, with
lockout counting and the authentication audit), this function asks what the gate offers today
(`locked_out`, `verify_token`); the web front end calls nothing else, so swapping its body for
`Gate.authenticate` is a change here only. Failures are audited by the caller (a refusal).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pacsguard.archive import tokens
from pacsguard.archive.config import Settings
from pacsguard.archive.security.gate import Gate, normalize_address
from pacsguard.archive.security.peer_text import shown
from pacsguard.archive.security.principal import AuthMethod, Principal
from pacsguard.errors import AuthenticationError

#: The AE title HTTP principals carry in audit lines and denials: they have no AE.
HTTP_PRINCIPAL: Final = "DICOMWEB"
#: Longest Authorization header value we look at (a JWT is a few KiB at most).
_MAX_CREDENTIAL: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class HttpCredential:
    """What an HTTP request presents: its Authorization header and where it comes from."""

    authorization: str | None
    address: str


def authenticate(
    gate: Gate, settings: Settings, credential: HttpCredential, *, now: datetime | None = None
) -> Principal:
    """The Principal a bearer token proves, or AuthenticationError (its reason is for the
    audit trail only). Blocking: reads the token file, verifies signatures."""
    address = normalize_address(credential.address)
    if gate.locked_out(address):
        raise AuthenticationError(f"source {address} is locked out")
    scheme, _, token = (credential.authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("no bearer token (Authorization: Bearer <token>)")
    if len(token) > _MAX_CREDENTIAL:
        raise AuthenticationError("bearer token too long")
    if token.startswith(tokens.PREFIX):
        path = settings.storage.data_dir / tokens.TOKENS_FILE
        record = tokens.verify(_records(path), token, now or datetime.now(UTC))
        if record is None:
            raise AuthenticationError("API token unknown, revoked or expired")
        username, method = record.username, AuthMethod.API_TOKEN
    else:
        claims = gate.verify_token(token)
        username, method = str(claims.get("sub", "")), AuthMethod.JWT
    permissions = settings.user_permissions(username)
    if permissions is None:
        raise AuthenticationError(f"user {shown(username)} is not a user of this archive")
    return Principal(HTTP_PRINCIPAL, address, method, username, permissions)


def _records(path: Path) -> list[tokens.TokenRecord]:
    try:
        return tokens.load(path)
    except Exception as exc:  # a damaged file refuses everyone, and says so in the audit line
        raise AuthenticationError(f"API token file unreadable: {exc.__class__.__name__}") from None
