"""Who is asking: the facts a front end knows about a peer, and what the gate made of them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """What a principal may be permitted to do (per registered AE / per role)."""

    ECHO = "echo"
    STORE = "store"
    FIND = "find"
    MOVE = "move"
    GET = "get"


class AuthMethod(StrEnum):
    USER_PASSWORD = "user-password"  # noqa: S105 - PS3.7 D.3.3.7 user identity type 2
    JWT = "jwt"  # PS3.7 D.3.3.7 user identity type 5
    MTLS = "mtls"  # client certificate bound to the AE
    ADDRESS = "address"  # source address only; allowed only where the config says so
    LAB = "lab"  # the deliberately open lab profile (loopback only)
    API_TOKEN = "api-token"  # noqa: S105 - an HTTP request with one of the archive's API tokens


#: The methods a registered AE may name (`auth = ...` in pacsguard.toml).
AE_AUTH_METHODS = (AuthMethod.USER_PASSWORD, AuthMethod.JWT, AuthMethod.MTLS, AuthMethod.ADDRESS)


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """A PS3.7 user identity item as received (secrets never leave the gate)."""

    identity_type: int  # 1 username, 2 username+passcode, 3 Kerberos, 4 SAML, 5 JWT
    primary: bytes
    secondary: bytes = b""
    positive_response_requested: bool = False


@dataclass(frozen=True, slots=True)
class PeerFacts:
    """What the transport and the association request say about a peer."""

    address: str
    port: int
    calling_ae: str
    called_ae: str
    tls: bool
    #: SHA-256 fingerprint (hex) of the verified TLS client certificate, when there is one.
    client_cert_sha256: str | None = None
    client_cert_subject: str | None = None
    user_identity: UserIdentity | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated peer: the registered AE it was matched to (empty for an HTTP user
    without one), the user it logged in as, how it proved it, and over which transport
    (`attempt.Transport`'s value)."""

    ae_title: str
    address: str
    method: AuthMethod
    username: str | None = None
    permissions: frozenset[Action] = frozenset()
    transport: str = "dimse"

    @property
    def name(self) -> str:
        """Who, for messages: the AE title, else the username."""
        return self.ae_title or self.username or "?"

    def may(self, action: Action) -> bool:
        return action in self.permissions


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 9.3.4), and why (for the audit trail, never the peer).

    result: 1 rejected-permanent, 2 rejected-transient. source: 1 DICOM UL service-user,
    2 service-provider (ACSE), 3 service-provider (presentation). reason: per source.
    """

    result: int
    source: int
    reason: int
    why: str
    #: Sent again and again to the same peer (a lockout): audited as counts, not line by line.
    repeated: bool = False
    #: The source or the account is locked out: kept when the codes are made uniform, so that
    #: a front end that may say so (HTTP: 429 with Retry-After rather than 401) can.
    locked_out: bool = False
