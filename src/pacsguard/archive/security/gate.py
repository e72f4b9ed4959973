"""The security gate: who a peer is (or the rejection to send), and what it may do.

One entry for every transport: `Gate.authenticate(AuthAttempt)` takes the source address, the
transport and the credentials (`attempt`: PS3.7 passcode or JWT, TLS client certificate,
source address, HTTP bearer JWT or API token; HTTP Basic is refused) and returns a Principal
or a Rejection. It counts failures per source and per account in one `Lockout` shared by
every front end (guessing over HTTP locks DIMSE out too), audits lockouts, and writes the
authentication line (`authentication_event`) unless the caller writes it (the DIMSE front
end: repeated refusals summed up, an association cap after the gate). Tokens are verified
behind a seam (`verifiers`: `TokenVerifier`, `ApiTokenVerifier`) so that a JWKS verifier
plugs in. `Gate.decide(PeerFacts)` is the DIMSE front end's call: `authenticate` of the
association request's attempt.

Over DIMSE, deny by default, in order:

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
`Gate.decide_now` gives a DIMSE peer the same decision without blocking when it can (a
remembered passcode, a certificate, an address), so that the front end can skip the hop to a
thread for most associations; anything that would block (a verification or waiting for another
thread's, a JWT's key look-up, an audit line) makes it return None before it changes any state,
and `decide` decides.

Over HTTP: a bearer JWT or an API token names a user. A verifier that says what the
credential itself grants (`verifiers.IdentityVerifier`: the JWKS verifier maps a JWT's scopes
through ``[jwt.scopes]``, `tokens.ApiTokens` gives the token's user's roles) decides the
permissions; with any other verifier the user must be in ``[users]`` and its roles are the
permissions; a verified client certificate names the mtls AE registered with it, and
with `allow_address_auth` a source address the one address AE registered for it. A request
without credentials is refused without counting (it guesses nothing; HTTP clients ask so).

`Gate.authorize` is the policy: the principal's permissions, then an optional intervention
(exactly one handler; any exception it raises means "deny").
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, Final

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
from pacsguard.archive.security.attempt import (
    ApiToken,
    AuthAttempt,
    BearerJwt,
    ClientCertificate,
    Passcode,
    Transport,
    UnsupportedScheme,
    dimse_attempt,
)
from pacsguard.archive.security.credentials import VerifiedCredentials
from pacsguard.archive.security.lockout import Lockout, LockoutCounter
from pacsguard.archive.security.peer_text import shown
from pacsguard.archive.security.principal import (
    Action,
    AuthMethod,
    PeerFacts,
    Principal,
    Rejection,
)
from pacsguard.archive.security.verifiers import (
    ApiTokenFactory,
    IdentityVerifier,
    TokenVerifier,
    VerifierFactory,
    static_key_verifier,
)
from pacsguard.errors import AuditLogError, AuthenticationError, PolicyDenied

__all__ = ["Gate", "PolicyIntervention", "Rejection", "authentication_event"]

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
        jwt_verifier: VerifierFactory = static_key_verifier,
        api_tokens: ApiTokenFactory | None = None,
        lockout: LockoutCounter | None = None,
    ) -> None:
        """`lockout`: the failure counter, when it is shared with other processes (workers)."""
        self._settings = settings
        self._lockout: LockoutCounter = lockout or Lockout(settings.security.lockout, clock)
        self._audit = audit
        self._intervention = intervention
        self._hasher = PasswordHasher()
        # Argon2 takes ~64 MiB per verification: bound how many run at once so that a burst of
        # logins cannot take gigabytes.
        self._hashing = threading.BoundedSemaphore(_CONCURRENT_ARGON2)
        self._verified = VerifiedCredentials(settings.security.credential_cache_s, clock)
        #: Whether the decision running on this thread has verified a passcode yet.
        self._this_thread = threading.local()
        self._make_jwt_verifier = jwt_verifier
        self._jwt_verifier = jwt_verifier(settings)
        self._make_api_tokens = api_tokens
        self._api_tokens = None if api_tokens is None else api_tokens(settings)

    @property
    def jwt_verifier(self) -> TokenVerifier | None:
        """The JWT verifier in force (for a start-up prefetch of the issuer's keys)."""
        return self._jwt_verifier

    def prepare_settings(self, settings: Settings) -> Callable[[], None]:
        """For `pacsguard reload`: check what deciding by `settings` needs (the JWT key), and
        return the swap, which cannot fail. After it, new associations are decided by the new
        registered AEs, users, roles and JWT settings; lockout counts carry over, and
        associations already accepted keep the Principal they were given. ConfigError, and
        nothing changed, when the new JWT key cannot be read."""
        verifier = self._make_jwt_verifier(settings)
        make_api_tokens = self._make_api_tokens
        api_tokens = None if make_api_tokens is None else make_api_tokens(settings)

        def swap() -> None:
            self._jwt_verifier, self._api_tokens = verifier, api_tokens
            self._settings = settings

        return swap

    # -- association ---------------------------------------------------------------------------

    def decide(self, facts: PeerFacts) -> Principal | Rejection:
        """A Principal for a DIMSE peer that proved who it is, or the A-ASSOCIATE-RJ to send.
        The DIMSE front end audits the association itself (`authentication_event`), summing
        up repeated refusals and after its association caps."""
        return self.authenticate(dimse_attempt(facts), audit=False)

    def decide_now(self, attempt: AuthAttempt) -> Principal | None:
        """For a DIMSE attempt, `authenticate`'s Principal when it can be had without blocking
        (no Argon2id verification or wait for one, no JWT key look-up, no audit line); None
        otherwise, and for every rejection: then call `authenticate` (on a thread). Nothing is
        counted or changed before None is returned, so `authenticate` starts from the same
        state. Safe on an event loop; audits nothing (the DIMSE front end does)."""
        if attempt.transport is not Transport.DIMSE:
            return None
        self._this_thread.may_block = False
        try:
            decision = self._decide(attempt)
        except _WouldBlock:
            return None
        finally:
            self._this_thread.may_block = True
        return decision if isinstance(decision, Principal) else None

    def _must_not_block(self) -> None:
        if not getattr(self._this_thread, "may_block", True):
            raise _WouldBlock

    def authenticate(self, attempt: AuthAttempt, *, audit: bool = True) -> Principal | Rejection:
        """Who is asking, over any transport: a Principal, or a Rejection (with the DIMSE
        A-ASSOCIATE-RJ codes; `Rejection.locked_out` tells a lockout from a failure). Counts
        failures per source and per account and audits lockouts.

        With `audit`, the authentication line (`authentication_event`) is written here too:
        a rejection stands when it cannot be; a Principal is only returned once its line is
        durable (AuditLogError otherwise)."""
        self._this_thread.verified = False
        if attempt.transport is Transport.DIMSE:
            decision = self._decide(attempt)
        else:
            decision = self._decide_http(attempt)
        if isinstance(decision, Rejection) and not self._settings.security.detailed_rejections:
            if not decision.repeated and not self._this_thread.verified:
                self._as_costly_as_a_password(attempt)
            decision = dataclasses.replace(
                decision, result=RJ_UNIFORM[0], source=RJ_UNIFORM[1], reason=RJ_UNIFORM[2]
            )
        if audit and self._audit is not None:
            event = authentication_event(attempt, decision)
            if isinstance(decision, Rejection):
                with contextlib.suppress(AuditLogError):
                    self._audit.emit(event)
            else:
                self._audit.emit(event)
        return decision

    def _decide(self, facts: AuthAttempt) -> Principal | Rejection:
        source = normalize_address(facts.address)
        if self._lockout.locked(source):
            return _source_locked(source)
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
        refused = self._refuse_registered(facts, source, ae)
        if refused is not None:
            return refused
        account = _account(ae)
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

    def _knock_on_locked(
        self, facts: AuthAttempt, source: str, account: str, who: str
    ) -> Rejection:
        self._must_not_block()  # costs a verification, counts, may audit a lockout
        if not self._settings.security.detailed_rejections:
            self._as_costly_as_a_password(facts)  # a stranger's unknown AE costs as much
        # Counts for the source, so that knocking on a locked account (each knock costing
        # a verification) soon locks the source out as well.
        if self._lockout.record_failure(source, tag=account):
            self._alert(facts, source, source)
        return Rejection(
            *RJ_LOCKED_OUT, why=f"{who}: {account} is locked out", repeated=True, locked_out=True
        )

    def _decide_http(self, attempt: AuthAttempt) -> Principal | Rejection:
        """HTTP: a bearer JWT or API token names a user (permissions: the user's roles); a
        client certificate or the source address names a registered AE (its permissions).
        A request without credentials is refused without counting: it guesses nothing, and
        it is how many HTTP clients ask what authentication is wanted."""
        source = normalize_address(attempt.address)
        if self._lockout.locked(source):
            return _source_locked(source)
        if self._settings.profile == "lab":
            if not _is_loopback(source):
                return self._fail(
                    attempt, source, RJ_NOT_AUTHENTICATED, "lab profile, not loopback"
                )
            return Principal("", source, AuthMethod.LAB, None, frozenset(Action), Transport.HTTP)
        scheme = attempt.credential(UnsupportedScheme)
        if scheme is not None:
            return self._fail(
                attempt,
                source,
                RJ_NOT_AUTHENTICATED,
                f"HTTP {shown(scheme.scheme)} authentication is not accepted; send a bearer token",
            )
        user_token = attempt.credential(BearerJwt) or attempt.credential(ApiToken)
        if user_token is not None:
            return self._http_user(attempt, source, user_token)
        certificate = attempt.credential(ClientCertificate)
        if certificate is not None and attempt.tls:
            return self._http_ae(attempt, source, _by_certificate(self._settings, certificate))
        if self._settings.security.allow_address_auth:
            by_address = [
                ae
                for ae in self._settings.aes
                if ae.auth is AuthMethod.ADDRESS
                and ae.address is not None
                and address_matches(ae.address, source)
            ]
            if len(by_address) == 1:
                return self._http_ae(attempt, source, by_address[0])
        return Rejection(*RJ_NOT_AUTHENTICATED, why="no credentials")

    def _http_user(
        self, attempt: AuthAttempt, source: str, credential: BearerJwt | ApiToken
    ) -> Principal | Rejection:
        try:
            if isinstance(credential, ApiToken):
                method = AuthMethod.API_TOKEN
                username, granted = self._api_token_user(credential.token)
            else:
                method = AuthMethod.JWT
                username, granted = self._jwt_user(credential.token)
        except AuthenticationError as exc:
            return self._fail(attempt, source, RJ_NOT_AUTHENTICATED, exc.reason)
        account = f"account:{username}"
        if self._lockout.locked(account):
            return self._knock_on_locked(attempt, source, account, username)
        # The account's own failures (passcode guesses over DIMSE) stay: a token proves the
        # token, and a busy token client must not keep wiping out a guesser's count.
        self._lockout.reset(source, tag=account)
        return Principal("", source, method, username, granted, Transport.HTTP)

    def _api_token_user(self, token: str) -> tuple[str, frozenset[Action]]:
        verifier = self._api_tokens
        if verifier is None:
            raise AuthenticationError("API tokens are not accepted here")
        if isinstance(verifier, IdentityVerifier):  # what the token itself grants
            identity = verifier.identity(token)
            return identity.username, identity.permissions
        return self._registered(verifier.verify(token))

    def _jwt_user(self, token: str | bytes) -> tuple[str, frozenset[Action]]:
        verifier = self._jwt_verifier
        if isinstance(verifier, IdentityVerifier):  # the scopes it carries ([jwt.scopes])
            text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
            identity = verifier.identity(text)
            return identity.username, identity.permissions
        return self._registered(str(self.verify_token(token).get("sub") or ""))

    def _registered(self, username: str) -> tuple[str, frozenset[Action]]:
        """A user a token names, with its roles' permissions; AuthenticationError when the
        user is not in ``[users]``."""
        roles = self._settings.user_permissions(username)
        if roles is None:
            raise AuthenticationError(f"token user {shown(username)} is not registered")
        return username, roles

    def _http_ae(
        self, attempt: AuthAttempt, source: str, ae: RegisteredAE | None
    ) -> Principal | Rejection:
        if ae is None:
            return self._fail(
                attempt, source, RJ_NOT_AUTHENTICATED, "client certificate is not registered"
            )
        refused = self._refuse_registered(attempt, source, ae)
        if refused is not None:
            return refused
        self._lockout.reset(source, tag=_account(ae))
        return Principal(ae.ae_title, source, ae.auth, None, ae.permissions, Transport.HTTP)

    def _refuse_registered(
        self, attempt: AuthAttempt, source: str, ae: RegisteredAE
    ) -> Rejection | None:
        """Any transport: the rejection when registered `ae` may not log in from `source`
        (another registered address) or its account is locked out; None when it may try."""
        if ae.address is not None and not address_matches(ae.address, source):
            return self._fail(
                attempt, source, RJ_NOT_AUTHENTICATED, f"{ae.ae_title} not allowed from {source}"
            )
        account = _account(ae)
        if self._lockout.locked(account):
            return self._knock_on_locked(attempt, source, account, ae.ae_title)
        return None

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
        facts: AuthAttempt,
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

    def _alert(self, facts: AuthAttempt, source: str, locked: str) -> None:
        if self._audit is None:
            return
        lockout = self._settings.security.lockout
        self._audit.emit(
            AuditEvent(
                EventType.AUTHENTICATION,
                EventAction.EXECUTE,
                EventOutcome.SERIOUS_FAILURE,
                (Participant(ae_title=facts.calling_ae[:16] or None, address=source),),
                detail={
                    "result": "locked-out",
                    "locked": locked,
                    "failures": lockout.max_failures,
                    "window_s": int(lockout.window_s),
                    "lockout_s": int(lockout.lockout_s),
                },
            )
        )

    def _authenticate(self, ae: RegisteredAE, facts: AuthAttempt) -> str | None:
        """The authenticated username (None for mtls/address), or AuthenticationError."""
        if ae.auth is AuthMethod.USER_PASSWORD:
            return self._check_password(ae, facts)
        if ae.auth is AuthMethod.JWT:
            return self._check_jwt(ae, facts)
        if ae.auth is AuthMethod.MTLS:
            certificate = facts.credential(ClientCertificate)
            if not facts.tls or certificate is None:
                raise AuthenticationError("mtls AE without a verified TLS client certificate")
            if certificate.sha256.lower() != ae.cert_sha256:
                raise AuthenticationError("client certificate is not the registered one")
            return None
        if ae.auth is AuthMethod.ADDRESS:
            if not self._settings.security.allow_address_auth:
                raise AuthenticationError("address auth is off ([security] allow_address_auth)")
            return None  # the registered address (mandatory for this method) matched above
        raise AuthenticationError(f"auth method {ae.auth.value!r} is not accepted here")

    def _check_password(self, ae: RegisteredAE, facts: AuthAttempt) -> str:
        identity = facts.credential(Passcode)
        if identity is None:
            kind = facts.dimse_identity_type
            if kind is None:
                raise AuthenticationError("no user identity item; username and passcode required")
            raise AuthenticationError(f"user identity type {kind}; type 2 with a passcode required")
        username = identity.username
        user = self._settings.users.get(username) if username == ae.username else None
        stored = user.password_hash if user is not None else None
        if stored is None:
            self._argon2(self._dummy_hash, identity.passcode)  # the same cost as a real user
            raise AuthenticationError(f"user {shown(username)} is not {ae.ae_title}'s user")
        if not self._passcode_verifies(username, stored, identity.passcode):
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

    def _as_costly_as_a_password(self, facts: AuthAttempt) -> None:
        """A rejected request that carried a passcode costs one verification, whichever check
        refused it (unknown AE, wrong called AE or address, an AE that takes no passcode, a
        locked account), so that its answer's timing does not tell which AE titles exist."""
        identity = facts.credential(Passcode)
        if identity is not None:
            self._argon2(self._dummy_hash, identity.passcode)

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

    def _check_jwt(self, ae: RegisteredAE, facts: AuthAttempt) -> str:
        self._must_not_block()  # the verifier may fetch keys (JWKS)
        identity = facts.credential(BearerJwt)
        if identity is None:
            kind = facts.dimse_identity_type
            if kind is None:
                raise AuthenticationError("no user identity item; a JWT (type 5) required")
            raise AuthenticationError(f"user identity type {kind}; JWT required")
        claims = self.verify_token(identity.token)
        if claims.get("sub") != ae.username:
            subject = shown(claims.get("sub"))
            raise AuthenticationError(f"token sub {subject} is not {ae.username!r}")
        return str(ae.username)

    def verify_token(self, token: bytes | str) -> Mapping[str, Any]:
        """Verify a JWT with the configured `TokenVerifier`; its claims, or
        AuthenticationError."""
        verifier = self._jwt_verifier
        if verifier is None:
            raise AuthenticationError("no JWT verification key configured")
        return verifier.verify(token)

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
            raise PolicyDenied(principal.name, action.value, "not in its permissions")
        if self._intervention is None:
            return
        try:
            self._intervention(principal, action)
        except Exception as exc:
            raise PolicyDenied(
                principal.name, action.value, f"refused by policy hook: {exc}"
            ) from exc


def _source_locked(source: str) -> Rejection:
    why = f"source {source} is locked out"
    return Rejection(*RJ_LOCKED_OUT, why=why, repeated=True, locked_out=True)


def _account(ae: RegisteredAE) -> str:
    """The lockout key of the account a registered AE logs in as."""
    return f"account:{ae.username}" if ae.username else f"account:ae:{ae.ae_title}"


def _by_certificate(settings: Settings, certificate: ClientCertificate) -> RegisteredAE | None:
    """The mtls AE registered with this certificate, or None."""
    wanted = certificate.sha256.lower()
    return next(
        (ae for ae in settings.aes if ae.auth is AuthMethod.MTLS and ae.cert_sha256 == wanted),
        None,
    )


def authentication_event(attempt: AuthAttempt, decision: Principal | Rejection) -> AuditEvent:
    """The audit line of one authentication, the same for every transport: who (AE title
    and/or user, source address), how (method, TLS), and the outcome with the reason. DIMSE
    writes it as the association's line (PS3.15 A.5.3: DCM 110114 either way)."""
    dimse = attempt.transport is Transport.DIMSE
    event = EventType.ASSOCIATION if dimse else EventType.AUTHENTICATION
    detail: dict[str, str | int | bool]
    if isinstance(decision, Rejection):
        participant = Participant(
            ae_title=attempt.calling_ae[:16] if dimse else None, address=attempt.address
        )
        detail = {"result": "rejected", "reason": decision.why, "tls": attempt.tls}
        outcome = EventOutcome.MINOR_FAILURE
    else:
        participant = Participant(
            ae_title=decision.ae_title if dimse else (decision.ae_title or None),
            address=attempt.address,
            user=decision.username,
        )
        detail = {"result": "accepted", "method": decision.method.value, "tls": attempt.tls}
        outcome = EventOutcome.SUCCESS
    if not dimse:
        detail["transport"] = attempt.transport.value
    return AuditEvent(event, EventAction.EXECUTE, outcome, (participant,), detail=detail)
