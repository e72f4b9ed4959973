"""What any transport tells the gate about a request: source, transport, credentials.

One `AuthAttempt` for every front end, so that one `Gate.authenticate` decides them all:

===========================  =================================  ========================
credential                   DIMSE                              HTTP
===========================  =================================  ========================
`Passcode`                   PS3.7 user identity type 2         (not accepted: no Basic)
`BearerJwt`                  PS3.7 user identity type 5         ``Authorization: Bearer``
`ApiToken`                   --                                 ``Authorization: Bearer``
                                                                ``pgt_...`` (`tokens`)
`ClientCertificate`          verified TLS client certificate    the same
(none: source address only)  AE with ``auth = "address"``       the same
`OtherIdentity`              PS3.7 types 1, 3, 4 (refused)      --
`UnsupportedScheme`          --                                 Basic, Digest... (refused)
===========================  =================================  ========================

Secrets never appear in a repr (the fields are ``repr=False``), so an attempt can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from pacsguard.archive.security.principal import PeerFacts

#: PS3.7 D.3.3.7 user identity types.
USERNAME_AND_PASSCODE = 2
JWT_TOKEN = 5
#: The prefix of the archive's own API tokens (`pacsguard.archive.tokens.PREFIX`).
API_TOKEN_PREFIX = "pgt_"  # noqa: S105 - a prefix, not a secret


class Transport(StrEnum):
    DIMSE = "dimse"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class Passcode:
    """A username and passcode (PS3.7 user identity type 2)."""

    username: str
    passcode: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BearerJwt:
    """A JSON Web Token: PS3.7 user identity type 5, or an HTTP bearer token."""

    token: str | bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One of the archive's own API tokens (``pgt_<id>_<secret>``, see `tokens`)."""

    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The verified TLS client certificate: its SHA-256 fingerprint (hex) and subject."""

    sha256: str
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class OtherIdentity:
    """A PS3.7 user identity the archive does not accept (username only, Kerberos, SAML, or
    type 2 without a passcode): kept so that the rejection can say which type came."""

    identity_type: int


@dataclass(frozen=True, slots=True)
class UnsupportedScheme:
    """An HTTP Authorization scheme the archive does not accept (Basic, Digest...)."""

    scheme: str


Credential = Passcode | BearerJwt | ApiToken | ClientCertificate | OtherIdentity | UnsupportedScheme
_C = TypeVar(
    "_C", Passcode, BearerJwt, ApiToken, ClientCertificate, OtherIdentity, UnsupportedScheme
)


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """A request to authenticate: where from, over what, with which credentials. `calling_ae`
    and `called_ae` are DIMSE's (empty over HTTP)."""

    transport: Transport
    address: str
    credentials: tuple[Credential, ...] = ()
    tls: bool = False
    port: int = 0
    calling_ae: str = ""
    called_ae: str = ""

    def credential(self, kind: type[_C]) -> _C | None:
        """The first credential of `kind`, or None."""
        return next((c for c in self.credentials if isinstance(c, kind)), None)

    @property
    def dimse_identity_type(self) -> int | None:
        """The PS3.7 user identity type the attempt carried, if any (for rejection reasons)."""
        for credential in self.credentials:
            if isinstance(credential, Passcode):
                return USERNAME_AND_PASSCODE
            if isinstance(credential, BearerJwt):
                return JWT_TOKEN
            if isinstance(credential, OtherIdentity):
                return credential.identity_type
        return None


def dimse_attempt(facts: PeerFacts) -> AuthAttempt:
    """The attempt an A-ASSOCIATE-RQ makes (`PeerFacts`): its certificate and user identity."""
    credentials: list[Credential] = []
    if facts.tls and facts.client_cert_sha256 is not None:
        credentials.append(ClientCertificate(facts.client_cert_sha256, facts.client_cert_subject))
    identity = facts.user_identity
    if identity is not None:
        if identity.identity_type == USERNAME_AND_PASSCODE and identity.secondary:
            username = identity.primary.decode("utf-8", errors="replace")
            credentials.append(Passcode(username, identity.secondary))
        elif identity.identity_type == JWT_TOKEN:
            credentials.append(BearerJwt(identity.primary))
        else:
            credentials.append(OtherIdentity(identity.identity_type))
    return AuthAttempt(
        Transport.DIMSE,
        facts.address,
        tuple(credentials),
        tls=facts.tls,
        port=facts.port,
        calling_ae=facts.calling_ae,
        called_ae=facts.called_ae,
    )


def http_credentials(
    authorization: str | None, client_cert: ClientCertificate | None = None
) -> tuple[Credential, ...]:
    """The credentials of an HTTP request: its Authorization header (RFC 9110 11.6.2; a
    bearer token is an API token when it has the archive's prefix, else a JWT) and its
    verified client certificate. Basic and any other scheme are kept as `UnsupportedScheme`,
    so that the gate refuses them with a reason rather than ignoring them."""
    credentials: list[Credential] = []
    if authorization is not None and authorization.strip():
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            token: Credential = (
                ApiToken(value) if value.startswith(API_TOKEN_PREFIX) else BearerJwt(value)
            )
            credentials.append(token)
        else:
            credentials.append(UnsupportedScheme(scheme[:32]))
    if client_cert is not None:
        credentials.append(client_cert)
    return tuple(credentials)
