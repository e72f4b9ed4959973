"""Bearer JWTs (RFC 6750, RFC 9068) from the configured issuer, checked against its JWKS.

`JwtVerifier` fits the gate's seam (`security.verifiers.TokenVerifier`: `verify(token) ->
claims`, for HTTP ``Authorization: Bearer`` and PS3.7 user identity type 5 alike); build it
with `jwks_verifier(settings)`, a `VerifierFactory` (None when no JWKS is configured).
`verify` refuses, each with its own reason: a malformed or oversized token, ``alg: none``, any
HMAC algorithm (an HS256 token "signed" with the issuer's public key is the key-confusion
forgery), algorithms other than RS256/ES256, an unknown or unfit kid (`security.jwks`), a bad
signature, expiry (`exp`), not yet valid (`nbf`, `iat` in the future), another issuer or
audience, and missing `exp`/`iss`/`aud` or username claims. `leeway_s` applies to the times.

`identity(token)` also says what the token itself grants: the username from `username_claim`,
and the values of `roles_claim` (the space-separated OAuth2 `scope` by default, or a list
such as `roles`) looked up in `[jwt.scopes]`; values not listed grant nothing, and a token
that maps to no permission still authenticates (authorization then denies: 403, not 401).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import jwt

from pacsguard.archive.config import JwtSettings, Settings
from pacsguard.archive.security.jwks import ACCEPTED_ALGORITHMS, JwksCache
from pacsguard.archive.security.peer_text import shown
from pacsguard.archive.security.principal import Action
from pacsguard.archive.security.verified import VerifiedIdentity
from pacsguard.errors import AuthenticationError

__all__ = ["JwtVerifier", "jwks_verifier"]

#: Longest token looked at (PS3.7 allows 64 KiB; real JWTs are a few KiB at most).
MAX_TOKEN_BYTES: Final = 16_384

#: Longest username taken from a claim.
MAX_USERNAME: Final = 256
#: Scope or role values looked at, at most.
MAX_GRANTS: Final = 256

_REASONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidIssuedAtError, "iat invalid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.MissingRequiredClaimError, "missing claim"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm refused"),
    (jwt.InvalidKeyError, "key refused"),
    (jwt.DecodeError, "malformed"),
)


class JwtVerifier:
    """Bearer JWTs of one issuer and audience; see the module docstring. Thread-safe."""

    def __init__(self, settings: JwtSettings, keys: JwksCache) -> None:
        if not settings.issuer or not settings.audience:
            raise ValueError("JwtVerifier needs jwt.issuer and jwt.audience (config checks it)")
        self._settings = settings
        self._keys = keys

    @classmethod
    def from_settings(cls, settings: JwtSettings) -> JwtVerifier:
        """ConfigError when a JWKS file or CA file cannot be used; a URL is fetched later."""
        return cls(settings, JwksCache.from_settings(settings))

    def prefetch(self) -> str | None:
        """Fetch the issuer's keys now (at start-up, off the event loop, so that the first
        request does not wait for them): None, or why they could not be fetched."""
        return None if self._keys.refresh() else self._keys.last_error

    def verify(self, credential: str | bytes) -> Mapping[str, Any]:
        """The token's verified claims (with the username claim), or AuthenticationError."""
        settings = self._settings
        if len(credential) > MAX_TOKEN_BYTES:
            raise AuthenticationError(
                f"bearer JWT of {len(credential)} bytes (at most {MAX_TOKEN_BYTES})"
            )
        try:
            header = jwt.get_unverified_header(credential)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"bearer JWT malformed: {shown(exc)}") from None
        alg = header.get("alg")
        if alg is None:
            raise AuthenticationError("bearer JWT header has no alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthenticationError(f"bearer JWT alg {shown(alg)}: unsigned tokens are refused")
        if alg.upper().startswith("HS"):
            raise AuthenticationError(
                f"bearer JWT alg {shown(alg)} refused: the issuer's keys are public keys, and an "
                "HMAC checked with a public key is the key-confusion forgery"
            )
        if alg not in ACCEPTED_ALGORITHMS:
            raise AuthenticationError(
                f"bearer JWT alg {shown(alg)} refused; accepted: {', '.join(ACCEPTED_ALGORITHMS)}"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError(f"bearer JWT kid {shown(kid)} is not a string")
        key = self._keys.key(kid, alg)
        required = ["exp", "iss", "aud", settings.username_claim]
        try:
            claims: dict[str, Any] = jwt.decode(
                credential,
                key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": required, "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"bearer JWT {_reason(exc)}: {shown(exc)}") from None
        return claims

    def identity(self, credential: str | bytes) -> VerifiedIdentity:
        """Who the token names (`username_claim`) and what its scopes or roles grant through
        ``[jwt.scopes]``; AuthenticationError as `verify`."""
        claims = self.verify(credential)
        settings = self._settings
        username = claims[settings.username_claim]
        if not isinstance(username, str) or not username.strip() or len(username) > MAX_USERNAME:
            raise AuthenticationError(
                f"bearer JWT claim {settings.username_claim!r} = {shown(username)}: expected a "
                f"non-empty string of at most {MAX_USERNAME} characters"
            )
        grants = _grants(claims.get(settings.roles_claim), settings.roles_claim)
        permissions: set[Action] = set()
        for grant in grants:
            permissions |= settings.scopes.get(grant, frozenset())
        try:
            expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
        except (OverflowError, OSError, ValueError):
            raise AuthenticationError(
                f"bearer JWT exp {shown(claims['exp'])} is out of range"
            ) from None
        jti = claims.get("jti")
        return VerifiedIdentity(
            username=username,
            permissions=frozenset(permissions),
            expires=expires,
            kind="jwt",
            credential_id=jti[:64] if isinstance(jti, str) else None,
            grants=grants,
        )


def _grants(value: object, claim: str) -> tuple[str, ...]:
    """The scope or role values of a claim: a space-separated string or a list of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        values = value.split()
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        values = list(value)
    else:
        raise AuthenticationError(
            f"bearer JWT claim {claim!r} = {shown(value)}: expected a space-separated string "
            "or a list of strings"
        )
    if len(values) > MAX_GRANTS:
        raise AuthenticationError(f"bearer JWT claim {claim!r}: {len(values)} values, at most 256")
    return tuple(dict.fromkeys(values))


def _reason(exc: jwt.PyJWTError) -> str:
    return next((why for kind, why in _REASONS if isinstance(exc, kind)), "rejected")


def jwks_verifier(settings: Settings) -> JwtVerifier | None:
    """The gate's `VerifierFactory` for ``[jwt] jwks_file``/``jwks_url``: None when neither is
    set. Each call builds a new key cache (a reload fetches the set anew)."""
    if not settings.jwt.jwks_configured:
        return None
    return JwtVerifier.from_settings(settings.jwt)
