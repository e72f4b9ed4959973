"""What a verified HTTP credential says: who, with which permissions, until when.

The gate's seam (`security.verifiers`: `TokenVerifier.verify -> claims`,
`ApiTokenVerifier.verify -> username`) is what `Gate.authenticate` calls. The verifiers here
(`bearer_jwt.JwtVerifier`, `tokens.ApiTokens`) fit it and also offer `identity(credential)`:
a `VerifiedIdentity` with the username from the configured claim, the permissions the
credential itself grants (a JWT's scopes or roles through ``[jwt.scopes]``; an API token's
user's roles), its expiry and its id for the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pacsguard.archive.security.principal import Action

__all__ = ["CredentialKind", "VerifiedIdentity"]

CredentialKind = Literal["api-token", "jwt"]


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """Who a verified credential speaks for, and what it lets them do."""

    username: str
    permissions: frozenset[Action]
    #: When the credential stops being valid (UTC).
    expires: datetime
    kind: CredentialKind
    #: Which credential it was, for the audit trail: the API token id or the JWT's jti.
    credential_id: str | None = None
    #: The scopes or roles the credential carried (before mapping), for the audit trail.
    grants: tuple[str, ...] = ()
