"""Gate.authenticate: one entry for every transport (DIMSE and HTTP), each credential kind,
lockout per source and per account shared across transports, and the authentication line."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher

from pacsguard.archive import tokens
from pacsguard.archive.audit.events import AuditEvent, EventOutcome, EventType
from pacsguard.archive.config import Settings, build_settings
from pacsguard.archive.security.attempt import (
    ApiToken,
    AuthAttempt,
    BearerJwt,
    ClientCertificate,
    Passcode,
    Transport,
    UnsupportedScheme,
    dimse_attempt,
    http_credentials,
)
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.security.principal import (
    Action,
    AuthMethod,
    PeerFacts,
    Principal,
    Rejection,
    UserIdentity,
)
from pacsguard.archive.security.verifiers import StaticKeyVerifier
from pacsguard.errors import AuditLogError, AuthenticationError

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"
CERT = "c0" * 32
HS_SECRET = b"0123456789abcdef0123456789abcdef-hs256-test-secret"
SOURCE = "127.0.0.5"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self, *, fail: bool = False) -> None:
        self.events: list[AuditEvent] = []
        self.fail = fail

    def emit(self, event: AuditEvent) -> None:
        if self.fail:
            raise AuditLogError("disk full")
        self.events.append(event)


class FileTokens:
    """An ApiTokenVerifier over the archive's token file (tokens.verify), as the HTTP front
    end will plug one in."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def verify(self, token: str) -> str:
        record = tokens.verify(tokens.load(self._path), token, datetime.now(UTC))
        if record is None:
            raise AuthenticationError("API token unknown, revoked or expired")
        return record.username


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    secret = tmp_path / "hs.secret"
    secret.write_bytes(HS_SECRET + b"\n")
    return build_settings(
        {
            "server": {"ae_title": "PACSGUARD"},
            "users": {
                "alice": {"password_hash": FAST.hash(PASSWORD), "roles": ["viewer"]},
                "svc": {"roles": ["modality"]},
            },
            "jwt": {"issuer": "https://idp", "audience": "pacs", "secret_file": str(secret)},
            "security": {
                "lockout": {"max_failures": 3, "window_s": 60, "lockout_s": 300},
                "allow_address_auth": True,
            },
            "ae": [
                {
                    "ae_title": "WORKSTATION",
                    "auth": "user-password",
                    "username": "alice",
                    "permissions": ["echo", "find", "get"],
                },
                {"ae_title": "APP", "auth": "jwt", "username": "svc", "permissions": ["store"]},
                {"ae_title": "CT1", "auth": "mtls", "cert_sha256": CERT, "permissions": ["store"]},
                {
                    "ae_title": "OLD",
                    "auth": "address",
                    "address": "127.0.0.9",
                    "permissions": ["echo"],
                },
            ],
        }
    )


def jwt_for(sub: str = "svc", key: bytes = HS_SECRET, **claims: Any) -> str:
    body = {"iss": "https://idp", "aud": "pacs", "sub": sub, "exp": int(time.time()) + 300}
    body.update(claims)
    return jwt.encode(body, key, algorithm="HS256")


def http(*credentials: Any, address: str = SOURCE, tls: bool = True) -> AuthAttempt:
    return AuthAttempt(Transport.HTTP, address, tuple(credentials), tls=tls)


def dimse(
    calling: str = "WORKSTATION",
    identity: UserIdentity | None = None,
    *,
    address: str = SOURCE,
    cert: str | None = None,
) -> AuthAttempt:
    facts = PeerFacts(address, 50000, calling, "PACSGUARD", True, cert, None, identity)
    return dimse_attempt(facts)


def passcode(secret: str = PASSWORD) -> UserIdentity:
    return UserIdentity(2, b"alice", secret.encode())


def principal(decision: Principal | Rejection) -> Principal:
    assert isinstance(decision, Principal), decision
    return decision


def rejection(decision: Principal | Rejection) -> Rejection:
    assert isinstance(decision, Rejection), decision
    return decision


# -- each credential kind ------------------------------------------------------------------------


def test_dimse_passcode_jwt_certificate_and_address(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    by_password = principal(gate.authenticate(dimse(identity=passcode())))
    assert (by_password.ae_title, by_password.username) == ("WORKSTATION", "alice")
    assert by_password.method is AuthMethod.USER_PASSWORD and by_password.transport == "dimse"
    by_jwt = principal(gate.authenticate(dimse("APP", UserIdentity(5, jwt_for().encode()))))
    assert by_jwt.method is AuthMethod.JWT and by_jwt.username == "svc"
    by_cert = principal(gate.authenticate(dimse("CT1", cert=CERT)))
    assert by_cert.method is AuthMethod.MTLS and by_cert.permissions == {Action.STORE}
    by_address = principal(gate.authenticate(dimse("OLD", address="127.0.0.9")))
    assert by_address.method is AuthMethod.ADDRESS


def test_http_bearer_jwt_names_a_user_with_its_roles(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    user = principal(gate.authenticate(http(*http_credentials(f"Bearer {jwt_for()}"))))
    assert (user.ae_title, user.username, user.method) == ("", "svc", AuthMethod.JWT)
    assert user.transport == "http" and user.name == "svc"
    assert user.permissions == {Action.ECHO, Action.STORE}  # role "modality"
    wrong_key = gate.authenticate(http(BearerJwt(jwt_for(key=b"x" * 40))))
    assert "token rejected" in rejection(wrong_key).why
    stranger = gate.authenticate(http(BearerJwt(jwt_for(sub="mallory"))))
    assert "not registered" in rejection(stranger).why


def test_http_api_token_through_the_verifier_seam(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / tokens.TOKENS_FILE
    record, token = tokens.issue(path, "alice", days=1)
    without = Gate(settings, Clock())
    assert "not accepted" in rejection(without.authenticate(http(ApiToken(token)))).why
    gate = Gate(settings, Clock(), api_tokens=lambda s: FileTokens(path))
    user = principal(gate.authenticate(http(*http_credentials(f"Bearer {token}"))))
    assert (user.username, user.method) == ("alice", AuthMethod.API_TOKEN)
    assert user.permissions == {Action.ECHO, Action.FIND, Action.MOVE, Action.GET}
    tokens.revoke(path, record.id)
    assert "revoked" in rejection(gate.authenticate(http(ApiToken(token)))).why


def test_http_client_certificate_and_address(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    ct = principal(gate.authenticate(http(ClientCertificate(CERT))))
    assert (ct.ae_title, ct.method, ct.transport) == ("CT1", AuthMethod.MTLS, "http")
    unknown = gate.authenticate(http(ClientCertificate("d1" * 32)))
    assert "not registered" in rejection(unknown).why
    plain = gate.authenticate(http(ClientCertificate(CERT), tls=False))
    assert rejection(plain).why == "no credentials"  # no certificate without TLS
    old = principal(gate.authenticate(http(address="127.0.0.9")))
    assert (old.ae_title, old.method) == ("OLD", AuthMethod.ADDRESS)


def test_http_basic_is_refused_with_a_reason(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    (basic,) = http_credentials("Basic YWxpY2U6c2VjcmV0")
    assert basic == UnsupportedScheme("Basic")
    why = rejection(gate.authenticate(http(basic))).why
    assert "Basic" in why and "bearer" in why


def test_http_credentials_parse_the_authorization_header() -> None:
    assert http_credentials(None) == () and http_credentials("  ") == ()
    assert http_credentials("bearer pgt_0123") == (ApiToken("pgt_0123"),)
    assert http_credentials("Bearer a.b.c") == (BearerJwt("a.b.c"),)
    assert http_credentials("Bearer") == (UnsupportedScheme("Bearer"),)  # no token
    cert = ClientCertificate(CERT)
    assert http_credentials(None, cert) == (cert,)


def test_secrets_stay_out_of_reprs() -> None:
    for credential in (Passcode("alice", b"s3cret"), BearerJwt("s3cret"), ApiToken("s3cret")):
        assert "s3cret" not in repr(credential)


def test_a_plugged_jwt_verifier_is_used_and_rebuilt_on_reload(settings: Settings) -> None:
    built: list[Settings] = []

    class Accepts:
        def verify(self, token: str | bytes) -> Mapping[str, Any]:
            if token != "opaque":
                raise AuthenticationError("not ours")
            return {"sub": "alice"}

    def factory(s: Settings) -> Accepts:
        built.append(s)
        return Accepts()

    gate = Gate(settings, Clock(), jwt_verifier=factory)
    assert principal(gate.authenticate(http(BearerJwt("opaque")))).username == "alice"
    assert "not ours" in rejection(gate.authenticate(http(BearerJwt(jwt_for())))).why
    gate.prepare_settings(settings)()
    assert built == [settings, settings]


def test_the_default_verifier_is_the_static_key_one(settings: Settings) -> None:
    verifier = StaticKeyVerifier(settings, HS_SECRET)
    assert verifier.verify(jwt_for())["sub"] == "svc"
    with pytest.raises(AuthenticationError):
        verifier.verify(jwt_for(iss="https://elsewhere"))


# -- lockout, shared by the transports ------------------------------------------------------------


def test_http_failures_lock_the_source_for_dimse_too(settings: Settings) -> None:
    sink = Sink()
    gate = Gate(settings, Clock(), audit=sink)
    for _ in range(3):
        rejection(gate.authenticate(http(BearerJwt("garbage")), audit=False))
    locked = rejection(gate.authenticate(dimse(identity=passcode())))
    assert locked.locked_out and locked.repeated and "source 127.0.0.5" in locked.why
    assert locked.result == 1  # the codes stay uniform; locked_out says what it was
    assert gate.locked_out(SOURCE)
    alerts = [e for e in sink.events if e.detail.get("result") == "locked-out"]
    assert [a.detail["locked"] for a in alerts] == [SOURCE]
    other = principal(gate.authenticate(http(BearerJwt(jwt_for()), address="127.0.0.6")))
    assert other.username == "svc"


def test_missing_credentials_over_http_do_not_count(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    for _ in range(10):
        assert rejection(gate.authenticate(http())).why == "no credentials"
    assert not gate.locked_out(SOURCE)


def test_dimse_password_guessing_locks_the_account_for_http(settings: Settings) -> None:
    sink = Sink()
    clock = Clock()
    gate = Gate(settings, clock, audit=sink)
    for n in range(3):  # three addresses: no source reaches the limit, the account does
        guess = dimse(identity=passcode("guess"), address=f"127.0.1.{n}")
        rejection(gate.authenticate(guess))
    by_jwt = rejection(gate.authenticate(http(BearerJwt(jwt_for(sub="alice")))))
    assert by_jwt.locked_out and "account:alice" in by_jwt.why
    assert not gate.locked_out(SOURCE)
    clock.now += 301
    assert principal(gate.authenticate(http(BearerJwt(jwt_for(sub="alice"))))).username == "alice"
    locked = [e.detail["locked"] for e in sink.events if e.detail.get("result") == "locked-out"]
    assert locked == ["account:alice"]


def test_a_token_that_does_not_verify_counts_for_its_source_not_its_claimed_user(
    settings: Settings,
) -> None:
    gate = Gate(settings, Clock())
    forged = jwt_for(sub="alice", key=b"k" * 40)  # names alice, proves nothing
    for n in range(3):
        rejection(gate.authenticate(http(BearerJwt(forged), address=f"127.0.2.{n}")))
    assert principal(gate.authenticate(http(BearerJwt(jwt_for(sub="alice"))))).username == "alice"
    for _ in range(3):
        rejection(gate.authenticate(http(BearerJwt(forged))))
    assert gate.locked_out(SOURCE)


# -- the authentication line ---------------------------------------------------------------------


def test_the_gate_writes_one_authentication_line_per_attempt(settings: Settings) -> None:
    sink = Sink()
    gate = Gate(settings, Clock(), audit=sink)
    principal(gate.authenticate(http(BearerJwt(jwt_for()))))
    rejection(gate.authenticate(http(ApiToken("pgt_x"))))
    accepted, refused = sink.events
    assert accepted.event is EventType.AUTHENTICATION and accepted.outcome is EventOutcome.SUCCESS
    assert accepted.detail == {
        "result": "accepted",
        "method": "jwt",
        "tls": True,
        "transport": "http",
    }
    assert accepted.participants[0].user == "svc" and accepted.participants[0].ae_title is None
    assert refused.outcome is EventOutcome.MINOR_FAILURE
    assert refused.detail["result"] == "rejected" and "not accepted" in str(
        refused.detail["reason"]
    )
    principal(gate.authenticate(dimse(identity=passcode())))
    dimse_line = sink.events[-1]
    assert dimse_line.event is EventType.ASSOCIATION and "transport" not in dimse_line.detail
    assert dimse_line.participants[0].ae_title == "WORKSTATION"
    count = len(sink.events)
    gate.decide(PeerFacts(SOURCE, 1, "WORKSTATION", "PACSGUARD", False))  # front end audits
    assert len(sink.events) == count


def test_no_success_without_its_line_and_a_refusal_stands_without(settings: Settings) -> None:
    gate = Gate(settings, Clock(), audit=Sink(fail=True))
    with pytest.raises(AuditLogError):
        gate.authenticate(http(BearerJwt(jwt_for())))
    assert rejection(gate.authenticate(http(BearerJwt("garbage")))).why
