"""The seam between the gate and the credentials an HTTP client presents.

A verifier turns one credential (a bearer string) into a `VerifiedIdentity`, or raises
`AuthenticationError` whose `reason` says why (for the audit trail; the client sees a bare 401).
It only verifies: lockout counting, auditing and authorization are the gate's
(`Gate.authenticate`, `Gate.authorize`).

Two verifiers exist, one per kind of bearer string, told apart by their look, never by trying
both:

- ``pgt_<id>_<secret>``: a local API token (`pacsguard.archive.tokens.ApiTokenVerifier`);
- anything else: an OAuth2 bearer JWT from the configured issuer
  (`pacsguard.archive.security.bearer_jwt.JwtVerifier`, keys from `security.jwks`).

`BearerVerifier` routes a bearer string to the one that applies. `verify` may block (a JWKS
fetch, at most the fetch timeout, rate-limited; a stat of the tokens file): call it off the
event loop, as the DIMSE front end already calls the gate (its own executor).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final, Literal, Protocol

from pacsguard.archive.security.principal import Action
from pacsguard.errors import AuthenticationError

if TYPE_CHECKING:
    from pacsguard.archive.config import Settings

__all__ = [
    "API_TOKEN_PREFIX",
    "BearerKind",
    "BearerVerifier",
    "CredentialVerifier",
    "VerifiedIdentity",
    "bearer_kind",
]

#: What every local API token starts with (a JWT starts with "eyJ", base64url of '{"').
API_TOKEN_PREFIX: Final = "pgt_"  # noqa: S105 - a prefix, not a secret
#: Longest bearer string looked at; real JWTs are a few KiB at most.
MAX_CREDENTIAL_CHARS: Final = 16_384

BearerKind = Literal["api-token", "jwt"]


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """Who a verified credential speaks for, and what it lets them do."""

    username: str
    permissions: frozenset[Action]
    #: When the credential stops being valid (UTC); None for one without expiry.
    expires: datetime | None
    kind: BearerKind
    #: Which credential it was, for the audit trail: the API token id or the JWT's jti.
    credential_id: str | None = None
    #: The scopes or roles the credential carried (before mapping), for the audit trail.
    grants: tuple[str, ...] = ()


class CredentialVerifier(Protocol):
    """One kind of credential: `verify` returns who it is or raises AuthenticationError."""

    def verify(self, credential: str) -> VerifiedIdentity: ...


def bearer_kind(credential: str) -> BearerKind:
    """Which verifier a bearer string belongs to, by its prefix alone."""
    return "api-token" if credential.startswith(API_TOKEN_PREFIX) else "jwt"


class BearerVerifier:
    """Routes an HTTP bearer string to the API-token or the JWT verifier; a kind that is not
    configured is refused with a reason saying so."""

    def __init__(
        self,
        *,
        api_tokens: CredentialVerifier | None = None,
        jwt: CredentialVerifier | None = None,
    ) -> None:
        self._verifiers: dict[BearerKind, CredentialVerifier | None] = {
            "api-token": api_tokens,
            "jwt": jwt,
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> BearerVerifier:
        """API tokens from the data dir's tokens file (none while it does not exist), and
        bearer JWTs when ``[jwt] jwks_file`` or ``jwks_url`` is set. ConfigError when the
        JWKS file or CA file cannot be used. Build a new one on reload: it fetches anew."""
        from pacsguard.archive.security.bearer_jwt import JwtVerifier
        from pacsguard.archive.tokens import ApiTokenVerifier

        return cls(
            api_tokens=ApiTokenVerifier.from_settings(settings),
            jwt=JwtVerifier.from_settings(settings.jwt) if settings.jwt.jwks_configured else None,
        )

    def verify(self, credential: str) -> VerifiedIdentity:
        credential = credential.strip()
        if not credential:
            raise AuthenticationError("empty bearer credential")
        if len(credential) > MAX_CREDENTIAL_CHARS:
            raise AuthenticationError(
                f"bearer credential of {len(credential)} characters (at most "
                f"{MAX_CREDENTIAL_CHARS})"
            )
        kind = bearer_kind(credential)
        verifier = self._verifiers[kind]
        if verifier is None:
            what = "API tokens" if kind == "api-token" else "bearer JWTs ([jwt] jwks_file/url)"
            raise AuthenticationError(f"{kind}: not accepted here, {what} are not configured")
        return verifier.verify(credential)
