from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pacsguard.archive.audit.events import AuditEvent, EventOutcome, EventType
from pacsguard.archive.config import Settings, build_settings
from pacsguard.archive.security.attempt import dimse_attempt
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.security.principal import (
    Action,
    AuthMethod,
    PeerFacts,
    Principal,
    Rejection,
    UserIdentity,
)
from pacsguard.errors import AuditLogError, PolicyDenied

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"
CERT = "c0" * 32
HS_SECRET = b"0123456789abcdef0123456789abcdef-hs256-test-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    secret = tmp_path / "hs.secret"
    secret.write_bytes(HS_SECRET + b"\n")
    tree: dict[str, Any] = {
        "server": {"ae_title": "PACSGUARD"},
        "users": {
            "alice": {"password_hash": FAST.hash(PASSWORD), "roles": ["viewer"]},
            "svc": {"roles": ["viewer"]},
        },
        "jwt": {"issuer": "https://idp", "audience": "pacs", "secret_file": str(secret)},
        "security": {"lockout": {"max_failures": 3, "window_s": 60, "lockout_s": 300}},
        "ae": [
            {
                "ae_title": "WORKSTATION",
                "auth": "user-password",
                "username": "alice",
                "permissions": ["echo", "find", "store"],
            },
            {
                "ae_title": "BOUND",
                "auth": "user-password",
                "username": "alice",
                "address": "198.18.0.0/16",
                "permissions": ["echo"],
            },
            {"ae_title": "APP", "auth": "jwt", "username": "svc", "permissions": ["find"]},
            {"ae_title": "CT1", "auth": "mtls", "cert_sha256": CERT, "permissions": ["store"]},
            {
                "ae_title": "OLD",
                "auth": "address",
                "address": "198.19.9.9",
                "permissions": ["echo"],
            },
        ],
    }
    tree.update(extra)
    return build_settings(tree)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path)


def facts(
    calling: str = "WORKSTATION",
    *,
    called: str = "PACSGUARD",
    address: str = "198.18.2.3",
    identity: UserIdentity | None = None,
    tls: bool = True,
    cert: str | None = None,
) -> PeerFacts:
    return PeerFacts(
        address=address,
        port=50000,
        calling_ae=calling,
        called_ae=called,
        tls=tls,
        client_cert_sha256=cert,
        user_identity=identity,
    )


def password(user: str = "alice", secret: str = PASSWORD) -> UserIdentity:
    return UserIdentity(2, user.encode(), secret.encode())


def token(**claims: Any) -> UserIdentity:
    body = {"iss": "https://idp", "aud": "pacs", "sub": "svc", "exp": int(time.time()) + 300}
    body.update(claims)
    for key in [k for k, v in body.items() if v is None]:
        del body[key]
    return UserIdentity(5, jwt.encode(body, HS_SECRET, algorithm="HS256").encode())


def rj(decision: Principal | Rejection) -> tuple[int, int, int]:
    assert isinstance(decision, Rejection), decision
    return decision.result, decision.source, decision.reason


# -- AE titles -----------------------------------------------------------------------------------


@pytest.fixture
def detailed(tmp_path: Path) -> Settings:
    lockout = {"max_failures": 3, "window_s": 60, "lockout_s": 300}
    return _settings(tmp_path, security={"detailed_rejections": True, "lockout": lockout})


def test_wrong_called_ae_is_rejected_1_1_7_when_detailed(detailed: Settings) -> None:
    gate = Gate(detailed, Clock())
    assert rj(gate.decide(facts(called="ANY-SCP", identity=password()))) == (1, 1, 7)


def test_unregistered_calling_ae_is_rejected_1_1_3_when_detailed(detailed: Settings) -> None:
    gate = Gate(detailed, Clock())
    decision = gate.decide(facts("STRANGER", identity=password()))
    assert rj(decision) == (1, 1, 3)
    assert isinstance(decision, Rejection) and "STRANGER" in decision.why


def test_rejections_are_uniform_by_default_and_the_reason_is_kept(settings: Settings) -> None:
    clock = Clock()
    gate = Gate(settings, clock)
    called = gate.decide(facts(called="ANY-SCP", identity=password()))
    calling = gate.decide(facts("STRANGER", identity=password()))
    wrong = gate.decide(facts(identity=password(secret="guess")))
    assert rj(called) == rj(calling) == rj(wrong) == (1, 1, 1)
    assert isinstance(called, Rejection) and "ANY-SCP" in called.why
    assert isinstance(calling, Rejection) and "not registered" in calling.why
    assert isinstance(wrong, Rejection) and "wrong passcode" in wrong.why
    locked = gate.decide(facts(identity=password()))  # three failures from 198.18.2.3 above
    assert rj(locked) == (1, 1, 1)
    assert isinstance(locked, Rejection) and "locked out" in locked.why and locked.repeated


def test_peer_supplied_text_is_clipped_in_the_reason(settings: Settings) -> None:
    huge = "x" * 60_000 + "\n forged audit line"
    decision = Gate(settings, Clock()).decide(facts(identity=password(user=huge)))
    assert isinstance(decision, Rejection)
    assert len(decision.why) < 200 and "\n" not in decision.why and "forged" not in decision.why
    token_rj = Gate(settings, Clock()).decide(facts("APP", identity=token(sub="y" * 10_000)))
    assert isinstance(token_rj, Rejection) and len(token_rj.why) < 200


# -- user-password -------------------------------------------------------------------------------


def test_username_and_passcode_accepted(settings: Settings) -> None:
    decision = Gate(settings, Clock()).decide(facts(identity=password()))
    assert isinstance(decision, Principal)
    assert decision.ae_title == "WORKSTATION"
    assert decision.method is AuthMethod.USER_PASSWORD
    assert decision.username == "alice"
    assert decision.address == "198.18.2.3"
    # AE allows echo/find/store, alice's viewer role echo/find/move/get: both must allow
    assert decision.permissions == frozenset({Action.ECHO, Action.FIND})


@pytest.mark.parametrize(
    "identity",
    [
        None,  # no user identity item at all
        UserIdentity(1, b"alice"),  # username only
        UserIdentity(2, b"alice", b""),  # type 2 with an empty passcode
        UserIdentity(2, b"alice", b"wrong"),
        UserIdentity(2, b"bob", PASSWORD.encode()),  # right passcode, wrong user
        UserIdentity(5, b"not-a-token"),
        UserIdentity(3, b"alice", PASSWORD.encode()),  # right secret, but not as type 2
    ],
    ids=[
        "missing",
        "type1",
        "empty-passcode",
        "wrong-passcode",
        "wrong-user",
        "jwt-type",
        "kerberos-type",
    ],
)
def test_user_password_failures_are_rejected_1_1_1(
    settings: Settings, identity: UserIdentity | None
) -> None:
    decision = Gate(settings, Clock()).decide(facts(identity=identity))
    assert rj(decision) == (1, 1, 1)


def test_registered_address_is_enforced_for_every_method(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    assert isinstance(gate.decide(facts("BOUND", identity=password())), Principal)
    assert isinstance(
        gate.decide(facts("BOUND", address="::ffff:198.18.200.1", identity=password())), Principal
    )
    refused = gate.decide(facts("BOUND", address="198.19.0.1", identity=password()))
    assert rj(refused) == (1, 1, 1)
    assert isinstance(refused, Rejection) and "198.19.0.1" in refused.why


# -- JWT -----------------------------------------------------------------------------------------


def test_jwt_accepted(settings: Settings) -> None:
    decision = Gate(settings, Clock()).decide(facts("APP", identity=token()))
    assert isinstance(decision, Principal)
    assert decision.method is AuthMethod.JWT
    assert decision.username == "svc"
    assert decision.permissions == frozenset({Action.FIND})


@pytest.mark.parametrize(
    "identity",
    [
        token(sub="someone-else"),
        token(exp=int(time.time()) - 3600),
        token(aud="other-service"),
        token(iss="https://evil"),
        token(exp=None),
        UserIdentity(
            5,
            jwt.encode(
                {"iss": "https://idp", "aud": "pacs", "sub": "svc", "exp": 2**31},
                b"x" * 48,
                algorithm="HS256",
            ).encode(),
        ),
        UserIdentity(2, b"svc", b"secret"),
        None,
    ],
    ids=["sub", "expired", "aud", "iss", "no-exp", "bad-signature", "type2", "missing"],
)
def test_jwt_failures_are_rejected(settings: Settings, identity: UserIdentity | None) -> None:
    assert rj(Gate(settings, Clock()).decide(facts("APP", identity=identity))) == (1, 1, 1)


def test_jwt_rs256(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "idp.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = _settings(
        tmp_path,
        jwt={
            "issuer": "https://idp",
            "audience": "pacs",
            "algorithm": "RS256",
            "public_key_file": str(public),
        },
    )
    claims = {"iss": "https://idp", "aud": "pacs", "sub": "svc", "exp": int(time.time()) + 60}
    good = jwt.encode(claims, key, algorithm="RS256")
    gate = Gate(settings, Clock())
    assert isinstance(gate.decide(facts("APP", identity=UserIdentity(5, good.encode()))), Principal)
    # an HS256 token "signed" with the public key must not pass (algorithm confusion)
    forged = token()
    assert rj(gate.decide(facts("APP", identity=forged))) == (1, 1, 1)


# -- mTLS and address ----------------------------------------------------------------------------


def test_mtls_accepted_with_the_registered_certificate(settings: Settings) -> None:
    decision = Gate(settings, Clock()).decide(facts("CT1", cert=CERT.upper()))
    assert isinstance(decision, Principal)
    assert decision.method is AuthMethod.MTLS
    assert decision.username is None
    assert decision.permissions == frozenset({Action.STORE})


@pytest.mark.parametrize(
    ("cert", "tls"),
    [(None, True), ("d1" * 32, True), (CERT, False)],
    ids=["none", "other", "no-tls"],
)
def test_mtls_failures_are_rejected(settings: Settings, cert: str | None, tls: bool) -> None:
    assert rj(Gate(settings, Clock()).decide(facts("CT1", cert=cert, tls=tls))) == (1, 1, 1)


def test_address_auth_is_off_unless_allowed(tmp_path: Path, settings: Settings) -> None:
    assert rj(Gate(settings, Clock()).decide(facts("OLD", address="198.19.9.9"))) == (1, 1, 1)
    allowed = _settings(tmp_path, security={"allow_address_auth": True})
    gate = Gate(allowed, Clock())
    decision = gate.decide(facts("OLD", address="198.19.9.9"))
    assert isinstance(decision, Principal) and decision.method is AuthMethod.ADDRESS
    assert rj(gate.decide(facts("OLD", address="198.19.9.8"))) == (1, 1, 1)


# -- lockout -------------------------------------------------------------------------------------


def test_lockout_after_repeated_failures_then_expiry(detailed: Settings) -> None:
    clock, sink = Clock(), Sink()
    gate = Gate(detailed, clock, audit=sink)
    attacker = "198.18.6.6"
    for _ in range(3):
        assert rj(gate.decide(facts(address=attacker, identity=password(secret="guess")))) == (
            1,
            1,
            1,
        )
    # locked: even the right password is refused, transiently
    locked = gate.decide(facts(address=attacker, identity=password()))
    assert rj(locked) == (2, 1, 1)
    assert gate.locked_out(attacker)
    # other sources are not affected (alice's account is locked as well: other accounts)
    assert isinstance(gate.decide(facts("APP", address="198.18.7.7", identity=token())), Principal)
    # one audit alert for each lockout when it started: the source and the account
    alerts = [e for e in sink.events if e.event is EventType.AUTHENTICATION]
    assert [e.detail["locked"] for e in alerts] == [attacker, "account:alice"]
    assert all(e.outcome is EventOutcome.SERIOUS_FAILURE for e in alerts)
    assert all(e.participants[0].address == attacker for e in alerts)
    clock.now += 299
    assert rj(gate.decide(facts(address=attacker, identity=password()))) == (2, 1, 1)
    clock.now += 2
    assert isinstance(gate.decide(facts(address=attacker, identity=password())), Principal)


def test_failures_outside_the_window_do_not_add_up(settings: Settings) -> None:
    clock = Clock()
    gate = Gate(settings, clock)
    for _ in range(2):
        gate.decide(facts("STRANGER"))
    clock.now += 61
    gate.decide(facts("STRANGER"))
    assert not gate.locked_out("198.18.2.3")
    gate.decide(facts("STRANGER"))
    gate.decide(facts("STRANGER"))
    assert gate.locked_out("198.18.2.3")


def test_success_clears_the_failure_count(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    for _ in range(2):
        gate.decide(facts(identity=password(secret="typo")))
    assert isinstance(gate.decide(facts(identity=password())), Principal)
    for _ in range(2):
        gate.decide(facts(identity=password(secret="typo")))
    assert not gate.locked_out("198.18.2.3")


def test_failures_against_an_account_from_many_sources_lock_the_account(
    settings: Settings,
) -> None:
    clock, sink = Clock(), Sink()
    gate = Gate(settings, clock, audit=sink)
    for i in range(3):  # one guess each from three addresses: no source reaches its limit
        gate.decide(facts(address=f"198.18.50.{i}", identity=password(secret="guess")))
    assert not any(gate.locked_out(f"198.18.50.{i}") for i in range(3))
    # alice's account is locked, even with her password from a fresh address, on both her AEs
    refused = gate.decide(facts(address="198.18.60.1", identity=password()))
    assert isinstance(refused, Rejection) and "account:alice is locked out" in refused.why
    assert isinstance(gate.decide(facts("BOUND", identity=password())), Rejection)
    # other accounts are not
    assert isinstance(gate.decide(facts("APP", address="198.18.60.1", identity=token())), Principal)
    alerts = [e for e in sink.events if e.event is EventType.AUTHENTICATION]
    assert [e.detail["locked"] for e in alerts] == ["account:alice"]
    clock.now += 301
    assert isinstance(gate.decide(facts(address="198.18.60.1", identity=password())), Principal)


def test_an_operator_lifting_every_lockout_lifts_account_lockouts_too(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    for i in range(3):
        gate.decide(facts(address=f"198.18.51.{i}", identity=password(secret="guess")))
    assert isinstance(gate.decide(facts(address="198.18.61.1", identity=password())), Rejection)
    assert gate.lift_lockouts(["198.18.51.0"]) == []  # by address: that source was not locked
    assert gate.lift_lockouts() == ["account:alice"]
    assert isinstance(gate.decide(facts(address="198.18.61.1", identity=password())), Principal)


def test_a_success_as_one_account_does_not_clear_failures_against_another(
    settings: Settings,
) -> None:
    gate = Gate(settings, Clock())
    source = "198.18.70.7"
    for _ in range(2):
        gate.decide(facts(address=source, identity=password(secret="guess")))  # against alice
    # the same source logs in correctly as another account in between
    assert isinstance(gate.decide(facts("APP", address=source, identity=token())), Principal)
    gate.decide(facts(address=source, identity=password(secret="guess")))
    assert gate.locked_out(source)


def test_a_success_does_not_clear_failures_with_unknown_ae_titles(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    for _ in range(2):
        gate.decide(facts("GUESS1"))
    assert isinstance(gate.decide(facts(identity=password())), Principal)
    gate.decide(facts("GUESS2"))
    assert gate.locked_out("198.18.2.3")


def test_lockout_counts_ipv4_mapped_and_plain_as_one_source(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    gate.decide(facts("STRANGER", address="198.18.2.3"))
    gate.decide(facts("STRANGER", address="::ffff:198.18.2.3"))
    gate.decide(facts("STRANGER", address="198.18.2.3"))
    assert gate.locked_out("::ffff:198.18.2.3")


def test_an_operator_lifts_lockouts_by_address_or_all(settings: Settings) -> None:
    clock, sink = Clock(), Sink()
    gate = Gate(settings, clock, audit=sink)
    for source in ("198.18.6.6", "198.18.6.7", "198.18.6.8"):
        for _ in range(3):
            gate.decide(facts("STRANGER", address=source))
        assert gate.locked_out(source)
    gate.decide(facts("STRANGER", address="198.18.9.9"))  # one failure, not locked
    assert gate.lift_lockouts(["::ffff:198.18.6.6", "198.18.9.9"]) == ["198.18.6.6"]
    assert not gate.locked_out("198.18.6.6") and gate.locked_out("198.18.6.7")
    # its failures are forgotten too: two more do not lock it again
    for _ in range(2):
        gate.decide(facts("STRANGER", address="198.18.6.6"))
    assert not gate.locked_out("198.18.6.6")
    clock.now += 301  # an expired lockout is not reported as lifted
    assert gate.lift_lockouts() == []
    alerts = [e for e in sink.events if e.event is EventType.SECURITY_ALERT]
    assert [dict(e.detail) for e in alerts] == [
        {"result": "lockout-lifted", "asked": "198.18.6.6,198.18.9.9", "lifted": "198.18.6.6"},
        {"result": "lockout-lifted", "asked": "all", "lifted": ""},
    ]


class Unwritable:
    """An audit log on a disk that fills up once `full` is set."""

    full = False

    def emit(self, event: AuditEvent) -> None:
        if self.full:
            raise AuditLogError("audit.jsonl: audit line not written (No space left on device)")


def test_a_lockout_is_not_lifted_when_the_lift_cannot_be_audited(settings: Settings) -> None:
    audit = Unwritable()
    gate = Gate(settings, Clock(), audit=audit)
    for _ in range(3):
        gate.decide(facts("STRANGER", address="198.18.6.6"))
    assert gate.locked_out("198.18.6.6")
    audit.full = True
    with pytest.raises(AuditLogError):
        gate.lift_lockouts(["198.18.6.6"])
    assert gate.locked_out("198.18.6.6")


def test_an_account_lockout_is_not_lifted_when_the_lift_cannot_be_audited(
    settings: Settings,
) -> None:
    audit = Unwritable()
    gate = Gate(settings, Clock(), audit=audit)
    for i in range(3):
        gate.decide(facts(address=f"198.18.52.{i}", identity=password(secret="guess")))
    audit.full = True
    with pytest.raises(AuditLogError):
        gate.lift_lockouts()
    audit.full = False
    assert isinstance(gate.decide(facts(address="198.18.62.1", identity=password())), Rejection)
    assert gate.lift_lockouts() == ["account:alice"]
    assert isinstance(gate.decide(facts(address="198.18.62.1", identity=password())), Principal)


# -- lab profile ---------------------------------------------------------------------------------


def test_lab_profile_accepts_any_ae_on_loopback_only(tmp_path: Path) -> None:
    lab = _settings(tmp_path, profile="lab")
    gate = Gate(lab, Clock())
    decision = gate.decide(facts("ANYTHING", address="127.0.0.1"))
    assert isinstance(decision, Principal)
    assert decision.method is AuthMethod.LAB
    assert decision.permissions == frozenset(Action)
    assert rj(gate.decide(facts("ANYTHING", address="198.51.100.1"))) == (1, 1, 1)
    # Deliberately open: any called AE too, as the exposed products ship.
    assert isinstance(
        gate.decide(facts("ANYTHING", called="OTHER", address="127.0.0.1")), Principal
    )


# -- authorize (policy) --------------------------------------------------------------------------


def _principal(*actions: Action) -> Principal:
    return Principal(
        "WORKSTATION", "198.18.2.3", AuthMethod.USER_PASSWORD, "alice", frozenset(actions)
    )


def test_authorize_allows_permitted_and_denies_the_rest(settings: Settings) -> None:
    gate = Gate(settings, Clock())
    gate.authorize(_principal(Action.FIND), Action.FIND)
    with pytest.raises(PolicyDenied) as caught:
        gate.authorize(_principal(Action.FIND), Action.STORE)
    assert caught.value.ae_title == "WORKSTATION"
    assert caught.value.action == "store"


def test_intervention_exception_means_deny(settings: Settings) -> None:
    calls: list[tuple[str, Action]] = []

    def no_store_at_night(principal: Principal, action: Action) -> None:
        calls.append((principal.ae_title, action))
        if action is Action.STORE:
            raise RuntimeError("stores are closed")

    gate = Gate(settings, Clock(), intervention=no_store_at_night)
    gate.authorize(_principal(Action.FIND, Action.STORE), Action.FIND)
    with pytest.raises(PolicyDenied, match="stores are closed"):
        gate.authorize(_principal(Action.FIND, Action.STORE), Action.STORE)
    # the hook is not consulted for what the permissions already deny
    with pytest.raises(PolicyDenied):
        gate.authorize(_principal(Action.FIND), Action.GET)
    assert calls == [("WORKSTATION", Action.FIND), ("WORKSTATION", Action.STORE)]


# -- passcode verification cost -----------------------------------------------------------------


class CountingHasher(PasswordHasher):
    """The real Argon2id hasher, counting verifications."""

    def __init__(self) -> None:
        super().__init__()
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifications += 1
        return super().verify(hash, password)


def counting_gate(settings: Settings, clock: Clock) -> tuple[Gate, CountingHasher]:
    gate = Gate(settings, clock)
    hasher = CountingHasher()
    gate._hasher = hasher  # the same Argon2id, counted
    return gate, hasher


def test_a_verified_passcode_is_remembered_for_a_while(settings: Settings) -> None:
    clock = Clock()
    gate, hasher = counting_gate(settings, clock)
    for _ in range(5):
        assert isinstance(gate.decide(facts(identity=password())), Principal)
    assert hasher.verifications == 1
    # a wrong passcode is never remembered, and never matches the remembered one
    for _ in range(2):
        assert isinstance(gate.decide(facts(identity=password(secret="nope"))), Rejection)
    assert hasher.verifications == 3
    clock.now += settings.security.credential_cache_s + 1
    assert isinstance(gate.decide(facts(identity=password())), Principal)
    assert hasher.verifications == 4


def test_a_passcode_in_use_stays_remembered_past_its_first_ttl(settings: Settings) -> None:
    """Remembered for credential_cache_s after its last use: a busy peer pays Argon2id once,
    not once per credential_cache_s; an idle one pays again."""
    clock = Clock()
    gate, hasher = counting_gate(settings, clock)
    ttl = settings.security.credential_cache_s
    for _ in range(6):
        assert isinstance(gate.decide(facts(identity=password())), Principal)
        clock.now += ttl * 0.6
    assert hasher.verifications == 1  # 3 x ttl after the verification, still remembered
    clock.now += ttl
    assert isinstance(gate.decide(facts(identity=password())), Principal)
    assert hasher.verifications == 2


def test_a_lockout_of_the_account_forgets_its_remembered_passcode(settings: Settings) -> None:
    clock = Clock()
    gate, hasher = counting_gate(settings, clock)
    assert isinstance(gate.decide(facts(identity=password())), Principal)
    for i in range(3):
        gate.decide(facts(address=f"198.18.80.{i}", identity=password(secret="guess")))
    assert isinstance(gate.decide(facts(identity=password())), Rejection)  # locked
    clock.now += 301
    before = hasher.verifications
    assert isinstance(gate.decide(facts(identity=password())), Principal)
    assert hasher.verifications == before + 1  # verified afresh


def test_concurrent_logins_with_the_same_passcode_hash_once(settings: Settings) -> None:
    gate, hasher = counting_gate(settings, Clock())
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: gate.decide(facts(identity=password())), range(8)))
    assert all(isinstance(r, Principal) for r in results)
    assert hasher.verifications == 1


def test_every_rejected_passcode_costs_one_verification(
    settings: Settings, detailed: Settings
) -> None:
    """Whichever check refuses a request with a passcode, it costs what a wrong passcode
    costs: the answer's timing does not tell which AE titles are registered."""
    gate, hasher = counting_gate(settings, Clock())
    refused = [  # each from its own address: no source lockout gets in the way
        facts("STRANGER", address="198.18.9.1", identity=password()),  # unknown AE
        facts(called="OTHER", address="198.18.9.2", identity=password()),  # not our title
        facts("BOUND", address="198.19.0.1", identity=password()),  # wrong address
        facts("APP", address="198.18.9.3", identity=password(user="svc")),  # takes a JWT
        facts("CT1", address="198.18.9.4", identity=password()),  # takes a certificate
        facts(address="198.18.9.5", identity=password(secret="guess")),  # wrong passcode
        facts(address="198.18.9.6", identity=password(user="bob")),  # not the AE's user
    ]
    for i, request in enumerate(refused, start=1):
        assert isinstance(gate.decide(request), Rejection)
        assert hasher.verifications == i, request
    # a locked account as well (three failures against alice from three addresses)
    for i in range(3):
        gate.decide(facts(address=f"198.18.90.{i}", identity=password(secret="guess")))
    before = hasher.verifications
    assert isinstance(gate.decide(facts(address="198.18.91.1", identity=password())), Rejection)
    assert hasher.verifications == before + 1
    # knocking on the locked account locks the knocking source too: no endless verifications
    for _ in range(2):
        gate.decide(facts(address="198.18.91.1", identity=password()))
    assert gate.locked_out("198.18.91.1")
    before = hasher.verifications
    gate.decide(facts(address="198.18.91.1", identity=password()))
    assert hasher.verifications == before
    # no passcode, nothing to verify; detailed rejections (commissioning) do not pretend
    assert isinstance(gate.decide(facts("STRANGER", address="198.18.92.1")), Rejection)
    assert hasher.verifications == before
    open_gate, open_hasher = counting_gate(detailed, Clock())
    open_gate.decide(facts("STRANGER", identity=password()))
    assert open_hasher.verifications == 0


# -- deciding without blocking (on the event loop) ----------------------------------------------


def now(gate: Gate, request: PeerFacts) -> Principal | None:
    return gate.decide_now(dimse_attempt(request))


def test_decide_now_accepts_a_remembered_passcode_without_verifying(settings: Settings) -> None:
    gate, hasher = counting_gate(settings, Clock())
    assert now(gate, facts(identity=password())) is None  # not verified yet: a thread's job
    assert hasher.verifications == 0
    assert isinstance(gate.decide(facts(identity=password())), Principal)
    decided = now(gate, facts(identity=password()))
    assert decided == gate.decide(facts(identity=password()))
    assert isinstance(decided, Principal) and decided.username == "alice"
    assert hasher.verifications == 1
    # certificates and addresses need no blocking work either
    cert = now(gate, facts("CT1", cert=CERT))
    assert isinstance(cert, Principal) and cert.method is AuthMethod.MTLS
    # a JWT's verifier may fetch keys: always a thread's job
    assert isinstance(gate.decide(facts("APP", identity=token())), Principal)
    assert now(gate, facts("APP", identity=token())) is None


def test_decide_now_leaves_every_refusal_to_decide_and_counts_nothing(
    settings: Settings,
) -> None:
    """A refusal costs a verification, counts towards lockouts and may be audited: decide_now
    returns None for it, before it changes anything, and decide refuses as always."""
    sink = Sink()
    gate = Gate(settings, Clock(), audit=sink)
    hasher = CountingHasher()
    gate._hasher = hasher
    assert isinstance(gate.decide(facts(identity=password())), Principal)  # remembered now
    refused = [
        facts("STRANGER", identity=password()),
        facts(called="OTHER", identity=password()),
        facts("BOUND", address="198.19.0.1", identity=password()),
        facts(identity=password(secret="guess")),
        facts("CT1", cert="ee" * 32),
    ]
    for request in refused * 3:  # three times: enough failures to lock out, if they counted
        assert now(gate, request) is None
    assert hasher.verifications == 1 and not sink.events
    assert not gate.locked_out("198.18.2.3")
    assert isinstance(now(gate, facts(identity=password())), Principal)
    # decide still counts and locks out; decide_now then has nothing to offer either
    for _ in range(3):
        assert isinstance(gate.decide(facts(identity=password(secret="guess"))), Rejection)
    assert gate.locked_out("198.18.2.3")
    assert now(gate, facts(identity=password())) is None
    assert isinstance(gate.decide(facts(identity=password())), Rejection)
