"""Bearer JWTs against a real HTTPS JWKS endpoint on 127.0.0.1: verified TLS, caching, key
rotation, the rate limit on unknown kids, and an issuer that goes down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacsguard.archive import tokens
from pacsguard.archive.app import jwt_verifier
from pacsguard.archive.config import JwtSettings, build_settings
from pacsguard.archive.security import jwks
from pacsguard.archive.security.attempt import AuthAttempt, Transport, http_credentials
from pacsguard.archive.security.bearer_jwt import JwtVerifier, jwks_verifier
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.security.jwks import JwksCache
from pacsguard.archive.security.principal import Action, Principal, Rejection
from pacsguard.errors import AuthenticationError
from tests.issuer import (
    AUDIENCE,
    ISSUER,
    IssuerCA,
    JwksEndpoint,
    ec_key,
    jwk,
    rsa_key,
    serve_jwks,
    token,
)

RSA_1, RSA_2, EC_1 = rsa_key(), rsa_key(), ec_key()
REFRESH_S, MAX_AGE_S, COOLDOWN_S = 300.0, 3600.0, 30.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> IssuerCA:
    return IssuerCA(tmp_path_factory.mktemp("issuer-ca"))


@pytest.fixture
def endpoint(ca: IssuerCA) -> Iterator[JwksEndpoint]:
    served = JwksEndpoint([jwk(RSA_1, "rsa-1", use="sig"), jwk(EC_1, "ec-1", alg="ES256")])
    with serve_jwks(ca, served):
        yield served


def _settings(url: str, ca_file: Path | None, **extra: Any) -> JwtSettings:
    tree: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": url,
        "jwks_refresh_s": REFRESH_S,
        "jwks_max_age_s": MAX_AGE_S,
        "jwks_cooldown_s": COOLDOWN_S,
        "scopes": {"pacs.read": ["find", "get"]},
        **extra,
    }
    if ca_file is not None:
        tree["jwks_ca_file"] = str(ca_file)
    return build_settings({"jwt": tree}).jwt


class Clock:
    """Monotonic time the test moves (the cache's ages and cooldown; token times are real)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _verifier(endpoint: JwksEndpoint, ca: IssuerCA, clock: Clock) -> JwtVerifier:
    settings = _settings(endpoint.url, ca.ca_file)
    return JwtVerifier(settings, JwksCache.from_settings(settings, clock=clock))


def test_keys_are_fetched_over_verified_tls_once_and_cached(
    endpoint: JwksEndpoint, ca: IssuerCA
) -> None:
    settings = _settings(endpoint.url, ca.ca_file)
    verifier = JwtVerifier.from_settings(settings)  # the real clock
    assert endpoint.requests == 0  # nothing fetched before a token needs it
    identity = verifier.identity(token(RSA_1, "rsa-1"))
    assert (identity.username, identity.permissions) == ("alice", {Action.FIND, Action.GET})
    assert verifier.identity(token(EC_1, "ec-1", sub="bob")).username == "bob"
    for _ in range(20):
        verifier.verify(token(RSA_1, "rsa-1"))
    assert endpoint.requests == 1


def test_a_prefetch_at_start_up_fetches_once_or_says_why_not(
    endpoint: JwksEndpoint, ca: IssuerCA
) -> None:
    verifier = JwtVerifier.from_settings(_settings(endpoint.url, ca.ca_file))
    assert verifier.prefetch() is None and endpoint.requests == 1
    verifier.verify(token(RSA_1, "rsa-1"))
    assert endpoint.requests == 1
    endpoint.status = 404
    refused = JwtVerifier.from_settings(_settings(endpoint.url, ca.ca_file)).prefetch()
    assert refused == f"JWKS fetch failed: {endpoint.url}: HTTP 404 Not Found"


def test_an_endpoint_whose_certificate_does_not_verify_is_not_trusted(
    endpoint: JwksEndpoint, ca: IssuerCA, tmp_path: Path
) -> None:
    other = IssuerCA(tmp_path / "other")
    for ca_file in (None, other.ca_file):  # the system's CAs, another CA
        verifier = JwtVerifier.from_settings(_settings(endpoint.url, ca_file))
        with pytest.raises(AuthenticationError, match=r"no issuer keys: JWKS fetch failed.*CERT"):
            verifier.verify(token(RSA_1, "rsa-1"))
    assert endpoint.requests == 0  # refused in the handshake, before any request
    wrong_name = endpoint.url.replace("127.0.0.1", "localhost")  # the certificate names the IP
    verifier = JwtVerifier.from_settings(_settings(wrong_name, ca.ca_file))
    with pytest.raises(AuthenticationError, match="JWKS fetch failed"):
        verifier.verify(token(RSA_1, "rsa-1"))


def test_a_rotated_key_is_found_by_refetching_and_random_kids_are_rate_limited(
    endpoint: JwksEndpoint, ca: IssuerCA
) -> None:
    clock = Clock()
    verifier = _verifier(endpoint, ca, clock)
    assert verifier.identity(token(RSA_1, "rsa-1")).username == "alice"
    assert endpoint.requests == 1
    # The issuer rotates: rsa-2 appears. Within the cooldown of the first fetch, an unknown
    # kid fetches nothing: no number of random kids makes us hammer the issuer.
    endpoint.keys = [*endpoint.keys, jwk(RSA_2, "rsa-2")]
    for i in range(200):
        with pytest.raises(AuthenticationError, match="unknown kid"):
            verifier.verify(token(RSA_2, f"random-{i}"))
    with pytest.raises(AuthenticationError, match="unknown kid 'rsa-2'"):
        verifier.verify(token(RSA_2, "rsa-2"))
    assert endpoint.requests == 1
    # Once the cooldown has passed, the unknown kid refetches and the new key verifies.
    clock.now += COOLDOWN_S
    assert verifier.identity(token(RSA_2, "rsa-2", sub="carol")).username == "carol"
    assert endpoint.requests == 2
    # Random kids again: one fetch per cooldown at most.
    for step in range(10):
        clock.now += COOLDOWN_S / 4
        with pytest.raises(AuthenticationError, match="unknown kid"):
            verifier.verify(token(RSA_2, f"again-{step}"))
    assert endpoint.requests == 2 + 2  # at +30 s and +60 s of 75 s
    # The old key is withdrawn: it keeps verifying until the cached set is refreshed.
    endpoint.keys = [jwk(RSA_2, "rsa-2")]
    assert verifier.identity(token(RSA_1, "rsa-1")).username == "alice"
    clock.now += REFRESH_S
    with pytest.raises(AuthenticationError, match="unknown kid 'rsa-1'"):
        verifier.verify(token(RSA_1, "rsa-1"))
    assert verifier.identity(token(RSA_2, "rsa-2")).username == "alice"


def test_cached_keys_outlive_an_issuer_that_is_down_until_their_max_age(
    ca: IssuerCA,
) -> None:
    clock = Clock()
    served = JwksEndpoint([jwk(RSA_1, "rsa-1")])
    with serve_jwks(ca, served):
        verifier = _verifier(served, ca, clock)
        verifier.verify(token(RSA_1, "rsa-1"))
        served.status = 503
        clock.now += REFRESH_S  # stale: refetched, fails, the cached keys go on
        assert verifier.identity(token(RSA_1, "rsa-1")).username == "alice"
        assert served.requests == 2
        for _ in range(50):  # no retry within the cooldown
            verifier.verify(token(RSA_1, "rsa-1"))
        assert served.requests == 2
        with pytest.raises(AuthenticationError, match=r"unknown kid 'new':.*HTTP 503"):
            verifier.verify(token(RSA_2, "new"))
    # Now nothing listens at all.
    clock.now += MAX_AGE_S - REFRESH_S - 1
    assert verifier.identity(token(RSA_1, "rsa-1")).username == "alice"
    clock.now += 1
    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(token(RSA_1, "rsa-1"))
    reason = refused.value.reason
    assert "issuer keys are 3600 s old (jwt.jwks_max_age_s = 3600)" in reason
    assert "cannot be refreshed: JWKS fetch failed" in reason
    assert served.url in reason
    # The issuer comes back (same keys, another port for a new server: same URL not
    # possible, so a fresh cache): first contact while down is refused with the reason.
    down = JwksEndpoint([jwk(RSA_1, "rsa-1")])
    with serve_jwks(ca, down):
        pass
    fresh = _verifier(down, ca, Clock())
    with pytest.raises(AuthenticationError, match="no issuer keys: JWKS fetch failed: https://"):
        fresh.verify(token(RSA_1, "rsa-1"))


def test_the_issuer_coming_back_is_used_after_the_cooldown(ca: IssuerCA) -> None:
    clock = Clock()
    served = JwksEndpoint([jwk(RSA_1, "rsa-1")])
    with serve_jwks(ca, served):
        served.status = 500
        verifier = _verifier(served, ca, clock)
        with pytest.raises(AuthenticationError, match="HTTP 500"):
            verifier.verify(token(RSA_1, "rsa-1"))
        served.status = 200
        with pytest.raises(AuthenticationError, match="HTTP 500"):  # within the cooldown
            verifier.verify(token(RSA_1, "rsa-1"))
        clock.now += COOLDOWN_S
        assert verifier.identity(token(RSA_1, "rsa-1")).username == "alice"
        assert served.requests == 2


def test_concurrent_unknown_kids_cause_one_fetch(endpoint: JwksEndpoint, ca: IssuerCA) -> None:
    clock = Clock()
    verifier = _verifier(endpoint, ca, clock)
    verifier.verify(token(RSA_1, "rsa-1"))
    endpoint.keys = [*endpoint.keys, jwk(RSA_2, "rsa-2")]
    clock.now += COOLDOWN_S
    results: list[str] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        results.append(verifier.identity(token(RSA_2, "rsa-2")).username)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == ["alice"] * 8
    assert endpoint.requests == 2


def test_a_key_set_the_endpoint_changes_into_garbage_is_not_taken(
    endpoint: JwksEndpoint, ca: IssuerCA
) -> None:
    clock = Clock()
    verifier = _verifier(endpoint, ca, clock)
    verifier.verify(token(RSA_1, "rsa-1"))
    endpoint.keys = [{"kty": "oct", "k": "c2VjcmV0", "kid": "rsa-1"}]  # an HMAC "key"
    clock.now += REFRESH_S
    assert verifier.identity(token(RSA_1, "rsa-1")).username == "alice"  # the last good set
    assert endpoint.requests == 2


def test_api_tokens_and_jwts_from_one_settings_tree(
    endpoint: JwksEndpoint, ca: IssuerCA, tmp_path: Path
) -> None:
    """What the gate is given: `jwks_verifier` (its VerifierFactory) and `ApiTokens`."""
    settings = build_settings(
        {
            "storage": {"data_dir": str(tmp_path)},
            "users": {"svc": {"roles": ["modality"]}},
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": endpoint.url,
                "jwks_ca_file": str(ca.ca_file),
                "scopes": {"pacs.read": ["find", "get"]},
            },
        }
    )
    _, api_token = tokens.issue(tokens.store_path(settings), "svc", days=1)
    api_tokens = tokens.ApiTokens.from_settings(settings)
    jwts = jwks_verifier(settings)
    assert jwts is not None and endpoint.requests == 0
    assert api_tokens.verify(api_token) == "svc"
    assert api_tokens.identity(api_token).permissions == {Action.ECHO, Action.STORE}
    assert jwts.verify(token(EC_1, "ec-1"))["sub"] == "alice"
    assert jwts.identity(token(EC_1, "ec-1")).permissions == {Action.FIND, Action.GET}
    assert endpoint.requests == 1
    with pytest.raises(AuthenticationError, match="malformed"):
        api_tokens.verify(token(EC_1, "ec-1"))  # each verifier refuses the other's kind
    with pytest.raises(AuthenticationError, match="malformed"):
        jwts.verify(api_token)


def test_a_trickling_issuer_cannot_hold_a_fetch_past_the_deadline(
    endpoint: JwksEndpoint, ca: IssuerCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte arrives well within the read timeout; the whole answer would take minutes."""
    monkeypatch.setattr(jwks, "FETCH_DEADLINE_S", 1.0)
    endpoint.trickle_s = 0.2
    verifier = _verifier(endpoint, ca, Clock())
    with pytest.raises(AuthenticationError, match="no complete answer within 1 s"):
        verifier.verify(token(RSA_1, "rsa-1"))


def test_the_gate_as_the_composition_root_wires_it(
    endpoint: JwksEndpoint, ca: IssuerCA, tmp_path: Path
) -> None:
    """Gate.authenticate over HTTP with `app.jwt_verifier` and `ApiTokens.from_settings`: a
    JWT's scopes and an API token's user's roles are the permissions; a forged HS256 token
    (the key-confusion forgery) is refused and counted for its source."""
    settings = build_settings(
        {
            "storage": {"data_dir": str(tmp_path)},
            "users": {"svc": {"roles": ["modality"]}},
            "security": {"lockout": {"max_failures": 2, "window_s": 60, "lockout_s": 300}},
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": endpoint.url,
                "jwks_ca_file": str(ca.ca_file),
                "scopes": {"pacs.read": ["find", "get"]},
            },
        }
    )
    _, api_token = tokens.issue(tokens.store_path(settings), "svc", days=1)
    gate = Gate(settings, jwt_verifier=jwt_verifier, api_tokens=tokens.ApiTokens.from_settings)

    def http(authorization: str, address: str = "127.0.0.7") -> Principal | Rejection:
        credentials = http_credentials(authorization)
        return gate.authenticate(AuthAttempt(Transport.HTTP, address, credentials, tls=True))

    by_jwt = http(f"Bearer {token(EC_1, 'ec-1')}")
    assert isinstance(by_jwt, Principal) and by_jwt.username == "alice"  # not in [users]
    assert by_jwt.permissions == {Action.FIND, Action.GET} and by_jwt.method.value == "jwt"
    by_token = http(f"Bearer {api_token}")
    assert isinstance(by_token, Principal) and by_token.username == "svc"
    assert by_token.permissions == {Action.ECHO, Action.STORE}
    forged = token(b"public-key-as-hmac-secret-32-bytes!", "ec-1", alg="HS256")
    assert isinstance(http(f"Bearer {forged}", "127.0.0.8"), Rejection)
    refused = http(f"Bearer {forged}", "127.0.0.8")
    assert isinstance(refused, Rejection) and "HS256" in refused.why
    assert gate.locked_out("127.0.0.8") and not gate.locked_out("127.0.0.7")
