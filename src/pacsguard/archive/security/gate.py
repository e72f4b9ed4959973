"""The security gate: who a peer is (or the A-ASSOCIATE-RJ to send), and what it may do.

Deny by default. `Gate.decide` applies, in order:

====================================================  =========  ==============================
rule                                                  detailed   PS3.8 Table 9-21 meaning
====================================================  =========  ==============================
source address locked out after repeated failures     2/1/1      transient, service-user,
                                                                 no-reason-given
called AE title is not ours                           1/1/7      called-AE-title-not-recognized
calling AE title is not registered                    1/1/3      calling-AE-title-not-recognized
peer address differs from the AE's registered one     1/1/1      permanent, service-user,
                                                                 no-reason-given
the AE's account locked out after repeated failures   2/1/1      (transient, as above)
credentials missing, of the wrong kind, or wrong      1/1/1      (same)
====================================================  =========  ==============================

By default the peer sees none of these distinctions: every rejection is 1/1/1, so a stranger
cannot learn which AE titles are registered, and a request carrying a passcode costs one Argon2id
verification whether or not its AE title exists (no timing difference either). The audit trail
keeps the real reason (`Rejection.why`). `[security] detailed_rejections = true` sends the
table's codes, for commissioning a device.

Authentication failures use 1/1/1 rather than pynetdicom's 2/2/1: the refusal is the
application's (the service-user's), not the ACSE provider's, and retrying the same request
will not succeed, so it is permanent. A lockout is transient (2/1/1): the same request succeeds
once the lockout expires.

Failures count per source address and per account (the registered AE's user, or the AE title
for certificate and address peers): every rejection counts for its source (scanners guessing AE
titles are locked out as well as password guessers), and a credential failure against a
registered AE also counts for its account, so that guessing from many addresses locks the
account. A success clears the failures against that account only (its own, and its source's
against it): logging in correctly as one account does not wipe out the failures its source
piled up against another account or with unknown AE titles.

Passcodes: Argon2id, at most `_CONCURRENT_ARGON2` verifications at once (64 MiB each); one that
verified is remembered for `[security] credential_cache_s` after its last use
(`credentials.VerifiedCredentials`).
`Gate.decide_now` gives the same decision without blocking when it can (a remembered passcode,
a certificate, an address), so that a front end can skip the hop to a thread for most
associations; anything that would block (a verification, waiting for another thread's, an
audit line) makes it return None before it changes any state, and `decide` decides.

`Gate.authorize` is the policy: the principal's permissions, then an optional intervention
(exactly one handler; any exception it raises means "deny").
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import jwt
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.config import RegisteredAE, Settings
from pacsguard.archive.security.credentials import VerifiedCredentials
from pacsguard.archive.security.lockout import Lockout
from pacsguard.archive.security.peer_text import shown
from pacsguard.archive.security.principal import (
    Action,
    AuthMethod,
    PeerFacts,
    Principal,
    Rejection,
)
from pacsguard.errors import AuthenticationError, ConfigError, PolicyDenied

__all__ = ["Gate", "PolicyIntervention", "Rejection"]

#: An intervention: exactly one handler; returning means "allow", raising means "deny".
PolicyIntervention = Callable[[Principal, Action], None]

RJ_LOCKED_OUT: Final = (2, 1, 1)
RJ_CALLED_AE: Final = (1, 1, 7)
RJ_CALLING_AE: Final = (1, 1, 3)
RJ_NOT_AUTHENTICATED: Final = (1, 1, 1)
#: What every rejection looks like to the peer unless detailed_rejections is on.
RJ_UNIFORM: Final = RJ_NOT_AUTHENTICATED
#: Argon2id verifications running at once: each takes 64 MiB and 4 threads (parallelism 4),
#: so one per 4 CPUs keeps the cores busy without more memory (measured on 2 CPUs: 2 at once
#: peaked at 222 MiB RSS, 1 at once at 157 MiB, for the same throughput).
_CONCURRENT_ARGON2: Final = max(1, (os.cpu_count() or 1) // 4)

USERNAME_AND_PASSCODE: Final = 2  # PS3.7 D.3.3.7 user identity types
JWT_TOKEN: Final = 5


class _WouldBlock(Exception):
    """Raised inside `Gate.decide_now` where deciding would block; never escapes it."""


def normalize_address(address: str) -> str:
    """One spelling per source: IPv4-mapped IPv6 as IPv4, no zone index."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def address_matches(registered: str, address: str) -> bool:
    """Whether `address` is the registered address, or inside the registered network."""
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(registered, strict=False)
    except ValueError:
        return False


class Gate:
    """Association decisions and policy checks for one settings tree. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        *,
        audit: AuditSink | None = None,
        intervention: PolicyIntervention | None = None,
    ) -> None:
        self._settings = settings
        self._lockout = Lockout(settings.security.lockout, clock)
        self._audit = audit
        self._intervention = intervention
        self._hasher = PasswordHasher()
        # Argon2 takes ~64 MiB per verification: bound how many run at once so that a burst of
        # logins cannot take gigabytes.
        self._hashing = threading.BoundedSemaphore(_CONCURRENT_ARGON2)
        self._verified = VerifiedCredentials(settings.security.credential_cache_s, clock)
        #: Whether the decision running on this thread has verified a passcode yet.
        self._this_thread = threading.local()
        self._jwt_key = (
            _jwt_key(settings) if any(ae.auth is AuthMethod.JWT for ae in settings.aes) else None
        )

    def prepare_settings(self, settings: Settings) -> Callable[[], None]:
        """For `pacsguard reload`: check what deciding by `settings` needs (the JWT key), and
        return the swap, which cannot fail. After it, new associations are decided by the new
        registered AEs, users, roles and JWT settings; lockout counts carry over, and
        associations already accepted keep the Principal they were given. ConfigError, and
        nothing changed, when the new JWT key cannot be read."""
        jwt_key = (
            _jwt_key(settings) if any(ae.auth is AuthMethod.JWT for ae in settings.aes) else None
        )

        def swap() -> None:
            self._jwt_key, self._settings = jwt_key, settings

        return swap

    # -- association ---------------------------------------------------------------------------

    def decide(self, facts: PeerFacts) -> Principal | Rejection:
        """A Principal for a peer that proved who it is, or the rejection to send."""
        self._this_thread.verified = False
        decision = self._decide(facts)
        if isinstance(decision, Rejection) and not self._settings.security.detailed_rejections:
            if not decision.repeated and not self._this_thread.verified:
                self._as_costly_as_a_password(facts)
            return Rejection(*RJ_UNIFORM, why=decision.why, repeated=decision.repeated)
        return decision

    def decide_now(self, facts: PeerFacts) -> Principal | None:
        """`decide`'s Principal when it can be had without blocking (no Argon2id verification
        or wait for one, no audit line); None otherwise, and for every rejection: then call
        `decide` (on a thread). Nothing is counted or changed before None is returned, so
        `decide` starts from the same state. Safe on an event loop."""
        self._this_thread.may_block = False
        try:
            decision = self._decide(facts)
        except _WouldBlock:
            return None
        finally:
            self._this_thread.may_block = True
        return decision if isinstance(decision, Principal) else None

    def _must_not_block(self) -> None:
        if not getattr(self._this_thread, "may_block", True):
            raise _WouldBlock

    def _decide(self, facts: PeerFacts) -> Principal | Rejection:
        source = normalize_address(facts.address)
        if self._lockout.locked(source):
            return Rejection(*RJ_LOCKED_OUT, why=f"source {source} is locked out", repeated=True)
        if self._settings.profile == "lab":
            # Deliberately open, like the products in the news: any calling and called AE,
            # every permission. Loopback only (validate_listen refuses anything else).
            if not _is_loopback(source):
                return self._fail(facts, source, RJ_NOT_AUTHENTICATED, "lab profile, not loopback")
            return Principal(
                facts.calling_ae.strip(), source, AuthMethod.LAB, None, frozenset(Action)
            )
        server_ae = self._settings.server.ae_title
        if facts.called_ae.strip() != server_ae:
            return self._fail(facts, source, RJ_CALLED_AE, f"called AE {shown(facts.called_ae)}")
        ae = self._settings.ae(facts.calling_ae)
        if ae is None:
            return self._fail(
                facts,
                source,
                RJ_CALLING_AE,
                f"calling AE {shown(facts.calling_ae)} not registered",
            )
        if ae.address is not None and not address_matches(ae.address, source):
            return self._fail(
                facts, source, RJ_NOT_AUTHENTICATED, f"{ae.ae_title} not allowed from {source}"
            )
        account = _account(ae)
        if self._lockout.locked(account):
            self._must_not_block()
            if not self._settings.security.detailed_rejections:
                self._as_costly_as_a_password(facts)  # a stranger's unknown AE costs as much
            # Counts for the source, so that knocking on a locked account (each knock costing
            # a verification) soon locks the source out as well.
            if self._lockout.record_failure(source, tag=account):
                self._alert(facts, source, source)
            return Rejection(
                *RJ_LOCKED_OUT, why=f"{ae.ae_title}: {account} is locked out", repeated=True
            )
        try:
            username = self._authenticate(ae, facts)
        except AuthenticationError as exc:
            return self._fail(
                facts,
                source,
                RJ_NOT_AUTHENTICATED,
                f"{ae.ae_title}: {exc.reason}",
                account=account,
                username=ae.username,
            )
        self._lockout.reset(account)
        self._lockout.reset(source, tag=account)
        return Principal(ae.ae_title, source, ae.auth, username, self._permissions(ae, username))

    def forgive(self, address: str) -> None:
        """Clear the failure count of a source: for our own self-check, which knocks with the
        scanner's AE guesses like a stranger would and must not lock out local operators."""
        self._lockout.lift([normalize_address(address)])

    def lift_lockouts(self, addresses: Sequence[str] | None = None) -> list[str]:
        """An operator lifts the lockout of `addresses` (of every source when None); audited
        as a security alert naming the sources that were locked out. The line is durable
        before anything is lifted: AuditLogError, and nothing lifted, when it cannot be."""
        wanted = None if addresses is None else [normalize_address(a) for a in addresses]
        if self._audit is not None:
            lifted = self._lockout.locked_among(wanted)
            self._audit.emit(
                AuditEvent(
                    EventType.SECURITY_ALERT,
                    EventAction.EXECUTE,
                    EventOutcome.SUCCESS,
                    (Participant(ae_title=self._settings.server.ae_title, requestor=False),),
                    detail={
                        "result": "lockout-lifted",
                        "asked": "all" if wanted is None else ",".join(wanted),
                        "lifted": ",".join(lifted),
                    },
                )
            )
        return self._lockout.lift(wanted)

    def locked_out(self, address: str) -> bool:
        """For other front ends (HTTP): is this source refused right now?"""
        return self._lockout.locked(normalize_address(address))

    def _fail(
        self,
        facts: PeerFacts,
        source: str,
        rj: tuple[int, int, int],
        why: str,
        *,
        account: str | None = None,
        username: str | None = None,
    ) -> Rejection:
        self._must_not_block()  # counts, may audit a lockout and costs a verification
        if self._lockout.record_failure(source, tag=account):
            self._alert(facts, source, source)
        if account is not None and self._lockout.record_failure(account):
            if username is not None:
                self._verified.forget_user(username)
            self._alert(facts, source, account)
        return Rejection(*rj, why=why)

    def _alert(self, facts: PeerFacts, source: str, locked: str) -> None:
        if self._audit is None:
            return
        lockout = self._settings.security.lockout
        self._audit.emit(
            AuditEvent(
                EventType.AUTHENTICATION,
                EventAction.EXECUTE,
                EventOutcome.SERIOUS_FAILURE,
                (Participant(ae_title=facts.calling_ae[:16], address=source),),
                detail={
                    "result": "locked-out",
                    "locked": locked,
                    "failures": lockout.max_failures,
                    "window_s": int(lockout.window_s),
                    "lockout_s": int(lockout.lockout_s),
                },
            )
        )

    def _authenticate(self, ae: RegisteredAE, facts: PeerFacts) -> str | None:
        """The authenticated username (None for mtls/address), or AuthenticationError."""
        if ae.auth is AuthMethod.USER_PASSWORD:
            return self._check_password(ae, facts)
        if ae.auth is AuthMethod.JWT:
            return self._check_jwt(ae, facts)
        if ae.auth is AuthMethod.MTLS:
            if not facts.tls or facts.client_cert_sha256 is None:
                raise AuthenticationError("mtls AE without a verified TLS client certificate")
            if facts.client_cert_sha256.lower() != ae.cert_sha256:
                raise AuthenticationError("client certificate is not the registered one")
            return None
        if ae.auth is AuthMethod.ADDRESS:
            if not self._settings.security.allow_address_auth:
                raise AuthenticationError("address auth is off ([security] allow_address_auth)")
            return None  # the registered address (mandatory for this method) matched above
        raise AuthenticationError(f"auth method {ae.auth.value!r} is not accepted here")

    def _check_password(self, ae: RegisteredAE, facts: PeerFacts) -> str:
        identity = facts.user_identity
        if identity is None:
            raise AuthenticationError("no user identity item; username and passcode required")
        if identity.identity_type != USERNAME_AND_PASSCODE or not identity.secondary:
            raise AuthenticationError(
                f"user identity type {identity.identity_type}; type 2 with a passcode required"
            )
        username = identity.primary.decode("utf-8", errors="replace")
        user = self._settings.users.get(username) if username == ae.username else None
        stored = user.password_hash if user is not None else None
        if stored is None:
            self._argon2(self._dummy_hash, identity.secondary)  # the same cost as a real user
            raise AuthenticationError(f"user {shown(username)} is not {ae.ae_title}'s user")
        if not self._passcode_verifies(username, stored, identity.secondary):
            raise AuthenticationError(f"wrong passcode for user {shown(username)}")
        return username

    def _passcode_verifies(self, username: str, stored: str, passcode: bytes) -> bool:
        digest = self._verified.digest(username, stored, passcode)
        if self._verified.known(digest):
            return True
        self._must_not_block()  # a verification, or waiting for another thread's
        with self._verified.first_check(digest) as first:
            if not first and self._verified.known(digest):
                return True
            if not self._argon2(stored, passcode):
                return False
            self._verified.remember(digest, username)
            return True

    def _argon2(self, stored: str, passcode: bytes) -> bool:
        """One Argon2id verification, at most `_CONCURRENT_ARGON2` at once."""
        self._must_not_block()
        self._this_thread.verified = True
        with self._hashing:
            try:
                return bool(self._hasher.verify(stored, passcode))
            except (VerificationError, InvalidHashError):
                return False

    def _as_costly_as_a_password(self, facts: PeerFacts) -> None:
        """A rejected request that carried a passcode costs one verification, whichever check
        refused it (unknown AE, wrong called AE or address, an AE that takes no passcode, a
        locked account), so that its answer's timing does not tell which AE titles exist."""
        identity = facts.user_identity
        if identity is None:
            return
        if identity.identity_type == USERNAME_AND_PASSCODE and identity.secondary:
            self._argon2(self._dummy_hash, identity.secondary)

    @cached_property
    def _dummy_hash(self) -> str:
        """Verified against when no real hash applies (wrong username, unknown AE...), with
        the parameters of the registered users' hashes, so that timing does not tell."""
        users = self._settings.users.values()
        stored = next((u.password_hash for u in users if u.password_hash), None)
        hasher = self._hasher
        if stored is not None:
            with contextlib.suppress(InvalidHashError):
                hasher = PasswordHasher.from_parameters(extract_parameters(stored))
        return hasher.hash("pacsguard-no-such-user")

    def _check_jwt(self, ae: RegisteredAE, facts: PeerFacts) -> str:
        identity = facts.user_identity
        if identity is None:
            raise AuthenticationError("no user identity item; a JWT (type 5) required")
        if identity.identity_type != JWT_TOKEN:
            raise AuthenticationError(f"user identity type {identity.identity_type}; JWT required")
        claims = self.verify_token(identity.primary)
        if claims.get("sub") != ae.username:
            subject = shown(claims.get("sub"))
            raise AuthenticationError(f"token sub {subject} is not {ae.username!r}")
        return str(ae.username)

    def verify_token(self, token: bytes | str) -> dict[str, Any]:
        """Verify a JWT's signature, exp, iss and aud; its claims, or AuthenticationError."""
        settings = self._settings.jwt
        if self._jwt_key is None:
            raise AuthenticationError("no JWT verification key configured")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._jwt_key,
                algorithms=[settings.algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"token rejected: {shown(exc)}") from None
        return claims

    def _permissions(self, ae: RegisteredAE, username: str | None) -> frozenset[Action]:
        """What both the AE entry and (if known) the user's roles allow."""
        granted = ae.permissions
        if username is not None:
            roles = self._settings.user_permissions(username)
            if roles is not None:
                granted &= roles
        return granted

    # -- policy --------------------------------------------------------------------------------

    def authorize(self, principal: Principal, action: Action) -> None:
        """Return if `principal` may `action`; raise PolicyDenied otherwise."""
        if not principal.may(action):
            raise PolicyDenied(principal.ae_title, action.value, "not in its permissions")
        if self._intervention is None:
            return
        try:
            self._intervention(principal, action)
        except Exception as exc:
            raise PolicyDenied(
                principal.ae_title, action.value, f"refused by policy hook: {exc}"
            ) from exc


def _account(ae: RegisteredAE) -> str:
    """The lockout key of the account a registered AE logs in as."""
    return f"account:{ae.username}" if ae.username else f"account:ae:{ae.ae_title}"


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
