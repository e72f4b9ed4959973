"""The seam where token verification plugs into the gate.

The gate never parses a token itself: it asks a `TokenVerifier` (bearer JWTs: DIMSE user
identity type 5 and HTTP ``Authorization: Bearer``) and an `ApiTokenVerifier` (the archive's
own ``pgt_`` tokens). Both raise `AuthenticationError` for anything they do not accept and
never another exception. A `VerifierFactory` builds the JWT verifier from the settings, so that
`pacsguard reload` can prepare a new one before swapping (ConfigError when it cannot).

`StaticKeyVerifier` is the static-key verifier: one HS256 secret or RS256 public key from a
file (PyJWT), for PS3.7 type 5 without a JWKS. The JWKS verifier (`bearer_jwt.jwks_verifier`)
and the API tokens (`tokens.ApiTokens.from_settings`) plug in as factories
(`Gate(..., jwt_verifier=..., api_tokens=...)`), rebuilt from the new settings on reload;
the composition root (`app.start_archive`) wires them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jwt

from pacsguard.archive.config import Settings
from pacsguard.archive.security.peer_text import shown
from pacsguard.archive.security.principal import AuthMethod
from pacsguard.archive.security.verified import VerifiedIdentity
from pacsguard.errors import AuthenticationError, ConfigError


class TokenVerifier(Protocol):
    """Verifies a JWT's signature, validity period, issuer and audience."""

    def verify(self, token: str | bytes) -> Mapping[str, Any]:
        """The token's claims (with a ``sub``), or AuthenticationError."""
        ...


class ApiTokenVerifier(Protocol):
    """Verifies one of the archive's API tokens (unknown, revoked and expired ones fail)."""

    def verify(self, token: str) -> str:
        """The username the token was issued to, or AuthenticationError."""
        ...


@runtime_checkable
class IdentityVerifier(Protocol):
    """A verifier that also says what the credential itself grants (`VerifiedIdentity`: a
    JWT's scopes through ``[jwt.scopes]``, an API token's user's roles). The gate uses it when
    a verifier offers it; otherwise a verified token names a user in ``[users]``, whose roles
    are its permissions."""

    def identity(self, credential: str) -> VerifiedIdentity: ...


#: Builds the JWT verifier for a settings tree; None when no JWT can be verified.
VerifierFactory = Callable[[Settings], TokenVerifier | None]
#: Builds the API token verifier for a settings tree; None when API tokens are not accepted.
ApiTokenFactory = Callable[[Settings], ApiTokenVerifier | None]


class StaticKeyVerifier:
    """PyJWT with the one key `[jwt]` names: HS256 (secret_file) or RS256 (public_key_file);
    exp, iss, aud and sub are required."""

    def __init__(self, settings: Settings, key: str | bytes) -> None:
        self._jwt = settings.jwt
        self._key = key

    def verify(self, token: str | bytes) -> Mapping[str, Any]:
        settings = self._jwt
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[settings.algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"token rejected: {shown(exc)}") from None
        return claims


def static_key_verifier(settings: Settings) -> StaticKeyVerifier | None:
    """The `StaticKeyVerifier` of `settings`: None unless an AE uses ``auth = "jwt"``;
    ConfigError when its key cannot be read."""
    if not any(ae.auth is AuthMethod.JWT for ae in settings.aes):
        return None
    return StaticKeyVerifier(settings, _jwt_key(settings))


def _jwt_key(settings: Settings) -> str | bytes:
    jwt_settings = settings.jwt
    path: Path | None = (
        jwt_settings.secret_file
        if jwt_settings.algorithm == "HS256"
        else jwt_settings.public_key_file
    )
    key = "jwt.secret_file" if jwt_settings.algorithm == "HS256" else "jwt.public_key_file"
    if path is None:
        raise ConfigError(f"{key}: required when an AE uses auth = 'jwt'")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key} = {str(path)!r} cannot be read: {exc.strerror}") from None
    return data.strip() if jwt_settings.algorithm == "HS256" else data.decode("ascii")
