"""Bearer JWTs against a JWKS file: RS256/ES256 accepted and mapped to permissions, every
forgery and misfit refused with its own reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacsguard.archive.config import Settings, build_settings
from pacsguard.archive.security.bearer_jwt import JwtVerifier, jwks_verifier
from pacsguard.archive.security.jwks import parse_jwks
from pacsguard.archive.security.principal import Action
from pacsguard.archive.security.verified import VerifiedIdentity
from pacsguard.errors import AuthenticationError, ConfigError
from tests import issuer
from tests.issuer import AUDIENCE, ISSUER, ec_key, jwk, rsa_key, token

RSA = rsa_key()
EC = ec_key()
OTHER_RSA = rsa_key()
ENC_KEY = rsa_key()
SCOPES = {"pacs.read": ["find", "get"], "pacs.write": ["store"], "reviewer": ["find"]}


def _jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


STANDARD_KEYS = _jwks(
    jwk(RSA, "rsa-1", alg="RS256", use="sig"),
    jwk(EC, "ec-1"),
    jwk(ENC_KEY, "enc-1", use="enc"),
    jwk(OTHER_RSA, "rs384-1", alg="RS384"),
    jwk(rsa_key(), "ops-1", key_ops=["encrypt"]),
    jwk(rsa_key(), "rsa-2", key_ops=["verify"]),
)


def _settings(tmp_path: Path, keys: dict[str, Any] = STANDARD_KEYS, **jwt_extra: Any) -> Settings:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(keys))
    return build_settings(
        {
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": str(jwks_file),
                "leeway_s": 5,
                "scopes": SCOPES,
                **jwt_extra,
            }
        }
    )


@pytest.fixture
def verifier(tmp_path: Path) -> JwtVerifier:
    return JwtVerifier.from_settings(_settings(tmp_path).jwt)


def test_rs256_and_es256_tokens_become_identities(verifier: JwtVerifier) -> None:
    exp = int(time.time()) + 300
    identity = verifier.identity(token(RSA, "rsa-1", exp=exp, scope="pacs.read openid pacs.read"))
    assert identity == VerifiedIdentity(
        username="alice",
        permissions=frozenset({Action.FIND, Action.GET}),
        expires=datetime.fromtimestamp(exp, UTC),
        kind="jwt",
        credential_id="token-1",
        grants=("pacs.read", "openid"),
    )
    es = verifier.identity(token(EC, "ec-1", sub="modality-7", scope="pacs.write"))
    assert (es.username, es.permissions) == ("modality-7", {Action.STORE})
    # Authenticated, but nothing granted: the gate's authorize denies (403, not 401).
    assert verifier.identity(token(RSA, "rsa-1", scope="openid")).permissions == frozenset()
    assert verifier.identity(token(RSA, "rsa-1", scope=None)).permissions == frozenset()
    # The gate's seam: verify gives the verified claims.
    claims = verifier.verify(token(EC, "ec-1", sub="bob"))
    assert (claims["sub"], claims["iss"], claims["aud"]) == ("bob", ISSUER, AUDIENCE)


def test_the_username_and_roles_claims_are_configurable(tmp_path: Path) -> None:
    settings = _settings(tmp_path, username_claim="preferred_username", roles_claim="roles")
    verifier = JwtVerifier.from_settings(settings.jwt)
    identity = verifier.identity(
        token(RSA, "rsa-1", preferred_username="dr.who", roles=["reviewer", "pacs.write"])
    )
    assert identity.username == "dr.who"
    assert identity.permissions == {Action.FIND, Action.STORE}
    with pytest.raises(AuthenticationError, match=r"missing claim.*preferred_username"):
        verifier.verify(token(RSA, "rsa-1"))
    with pytest.raises(AuthenticationError, match=r"'roles' = .*list of strings"):
        verifier.identity(token(RSA, "rsa-1", preferred_username="x", roles=[1, 2]))
    with pytest.raises(AuthenticationError, match="non-empty string"):
        verifier.identity(token(RSA, "rsa-1", preferred_username=["x"]))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with(secret: bytes, kid: str) -> str:
    """An HS256 token keyed with `secret`, by hand: PyJWT refuses to use a PEM as HMAC key."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(issuer.claims()).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def _with_header(good: str, **header: Any) -> str:
    """`good` with its header replaced (the signature no longer matches, on purpose)."""
    _, body, sig = good.split(".")
    return f"{_b64(json.dumps(header).encode())}.{body}.{sig}"


def _with_claims(good: str, **changes: Any) -> str:
    """`good` with its payload changed and its signature kept."""
    head, _, sig = good.split(".")
    return f"{head}.{_b64(json.dumps(issuer.claims(**changes)).encode())}.{sig}"


NOW = int(time.time())
REFUSALS: dict[str, tuple[str, str]] = {
    "expired": (token(RSA, "rsa-1", exp=NOW - 60), "expired"),
    "not yet valid": (token(RSA, "rsa-1", nbf=NOW + 600), "not yet valid"),
    "issued in the future": (token(RSA, "rsa-1", iat=NOW + 600), "not yet valid"),
    "wrong issuer": (token(RSA, "rsa-1", iss="https://evil.test"), "wrong issuer"),
    "wrong audience": (token(RSA, "rsa-1", aud="someone-else"), "wrong audience"),
    "no exp": (token(RSA, "rsa-1", exp=None), 'missing claim.*"exp"'),
    "no aud": (token(RSA, "rsa-1", aud=None), 'missing claim.*"aud"'),
    "no iss": (token(EC, "ec-1", iss=None), 'missing claim.*"iss"'),
    "no sub": (token(RSA, "rsa-1", sub=None), 'missing claim.*"sub"'),
    "alg none": (issuer.unsigned(), "alg 'none': unsigned tokens are refused"),
    "alg None spelled otherwise": (
        _with_header(token(RSA, "rsa-1"), alg="NONE", kid="rsa-1"),
        "unsigned",
    ),
    "no alg": (_with_header(token(RSA, "rsa-1"), kid="rsa-1"), "header has no alg"),
    "HS256 keyed with the RSA public key (PEM)": (
        _hs256_with(issuer.public_pem(RSA), "rsa-1"),
        "alg 'HS256' refused.*key-confusion",
    ),
    "HS256 keyed with the JWK's n": (
        _hs256_with(json.dumps(jwk(RSA, "rsa-1")).encode(), "rsa-1"),
        "key-confusion",
    ),
    "RS384": (token(RSA, "rsa-1", alg="RS384"), "alg 'RS384' refused; accepted: RS256, ES256"),
    "PS256": (token(RSA, "rsa-1", alg="PS256"), "alg 'PS256' refused"),
    "unknown kid": (token(RSA, "rsa-9"), "unknown kid 'rsa-9'"),
    "kid of an encryption key": (token(ENC_KEY, "enc-1"), "key 'enc-1' has use 'enc'"),
    "kid of a key for RS384": (token(OTHER_RSA, "rs384-1"), "key 'rs384-1' has alg 'RS384'"),
    "kid of a key without verify": (token(RSA, "ops-1"), "key_ops.*without 'verify'"),
    "ES256 token naming the RSA key": (
        token(EC, "rsa-1"),
        "token alg ES256 does not match key 'rsa-1', an RS256 key",
    ),
    "RS256 token naming the EC key": (token(RSA, "ec-1", alg="RS256"), "an ES256 key"),
    "signed by another key": (token(OTHER_RSA, "rsa-1"), "bad signature"),
    "payload changed": (_with_claims(token(RSA, "rsa-1"), sub="root"), "bad signature"),
    "no kid, two RS256-capable keys": (token(RSA, None), "no kid and 2 RS256 keys"),
    "kid not a string": (_with_header(token(RSA, "rsa-1"), alg="RS256", kid=7), "must be a string"),
    "exp out of range": (token(RSA, "rsa-1", exp=10**20), "exp '1000000000000.*' is out of range"),
    "garbage": ("not.a.jwt", "malformed"),
    "two parts": ("eyJhbGciOiJSUzI1NiJ9.e30", "malformed"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_bad_token_is_refused_with_its_reason(verifier: JwtVerifier, case: str) -> None:
    presented, why = REFUSALS[case]
    with pytest.raises(AuthenticationError, match=why):
        verifier.identity(presented)


def test_a_token_without_kid_is_accepted_when_one_key_fits(tmp_path: Path) -> None:
    verifier = JwtVerifier.from_settings(_settings(tmp_path, _jwks(jwk(RSA, None))).jwt)
    assert verifier.identity(token(RSA, None)).username == "alice"
    with pytest.raises(AuthenticationError, match="unknown kid"):
        verifier.verify(token(RSA, "rsa-1"))


def test_leeway_applies_to_expiry(tmp_path: Path) -> None:
    verifier = JwtVerifier.from_settings(_settings(tmp_path, leeway_s=120).jwt)
    assert verifier.verify(token(RSA, "rsa-1", exp=int(time.time()) - 60))["sub"] == "alice"
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(token(RSA, "rsa-1", exp=int(time.time()) - 300))


def test_short_rsa_keys_are_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    verifier = JwtVerifier.from_settings(_settings(tmp_path, _jwks(jwk(weak, "weak"))).jwt)
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        short = token(weak, "weak")  # PyJWT warns, and signs
    with pytest.raises(AuthenticationError, match=r"key refused: .*1024 bits"):
        verifier.verify(short)


def test_unusable_key_sets_are_refused_when_read() -> None:
    usable = jwk(RSA, "rsa-1")
    cases: dict[bytes, str] = {
        b"{": "not JSON",
        b"[]": "not a JWKS",
        b'{"keys": []}': "not a JWKS",
        json.dumps(_jwks({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})).encode(): "symmetric",
        json.dumps(_jwks({**usable, "d": "AQAB"})).encode(): "private key",
        json.dumps(_jwks({"kty": "OKP", "crv": "Ed25519", "x": "AA"})).encode(): "only RSA",
        json.dumps(_jwks(jwk(ec.generate_private_key(ec.SECP384R1()), "p384"))).encode(): (
            "crv 'P-384'"
        ),
        json.dumps(_jwks({"kty": "RSA", "kid": "broken", "n": "AA"})).encode(): "cannot be read",
        json.dumps(_jwks(*[usable] * 65)).encode(): "at most 64",
    }
    for data, why in cases.items():
        with pytest.raises(ValueError, match=why):
            parse_jwks(data, "test")
    keys = parse_jwks(json.dumps(_jwks(usable, {"kty": "oct", "k": "c2VjcmV0"})).encode(), "t")
    assert [e.kid for e in keys.entries if e.key is not None] == ["rsa-1"]


def test_a_bad_jwks_file_stops_the_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path, _jwks({"kty": "oct", "k": "c2VjcmV0"}))
    with pytest.raises(ConfigError, match="no usable RS256/ES256"):
        JwtVerifier.from_settings(settings.jwt)
    (tmp_path / "jwks.json").unlink()
    with pytest.raises(ConfigError, match=r"jwks.json"):
        JwtVerifier.from_settings(settings.jwt)


def test_a_kid_shared_by_an_rsa_and_an_ec_key_picks_by_algorithm(tmp_path: Path) -> None:
    keys = _jwks(jwk(RSA, "k1"), jwk(EC, "k1"))
    verifier = JwtVerifier.from_settings(_settings(tmp_path, keys).jwt)
    assert verifier.identity(token(RSA, "k1")).username == "alice"
    assert verifier.identity(token(EC, "k1")).username == "alice"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
CLAIM_NAMES = st.sampled_from(["exp", "nbf", "iat", "iss", "aud", "sub", "scope", "jti"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(changes=st.dictionaries(CLAIM_NAMES, JSON, max_size=4))
def test_any_claim_values_verify_or_are_refused_never_crash(
    verifier: JwtVerifier, changes: dict[str, Any]
) -> None:
    """Signed, well-formed tokens whose claims hold any JSON: an identity or a refusal."""
    presented = issuer.signed_payload(RSA, "rsa-1", {**issuer.claims(), **changes})
    try:
        identity = verifier.identity(presented)
    except AuthenticationError as exc:
        assert exc.reason.startswith("bearer JWT")
    else:
        assert isinstance(identity.username, str) and identity.expires is not None


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit"]), JSON, max_size=4))
def test_any_header_is_refused_never_crashes(verifier: JwtVerifier, header: dict[str, Any]) -> None:
    presented = _with_header(token(RSA, "rsa-1"), **header)
    with pytest.raises(AuthenticationError):
        verifier.verify(presented)


def test_oversized_tokens_are_refused_before_parsing(verifier: JwtVerifier) -> None:
    with pytest.raises(AuthenticationError, match="at most 16384"):
        verifier.verify(token(RSA, "rsa-1", padding="x" * 20_000))
    with pytest.raises(AuthenticationError, match="at most 16384"):
        verifier.verify(b"e" * 70_000)  # a PS3.7 identity item may carry 64 KiB


def test_jwks_verifier_is_a_verifier_factory(tmp_path: Path) -> None:
    """The gate's VerifierFactory: None without a JWKS, a verifier with one."""
    assert jwks_verifier(build_settings({})) is None
    made = jwks_verifier(_settings(tmp_path))
    assert made is not None and made.verify(token(RSA, "rsa-1"))["sub"] == "alice"


JWK_MEMBERS = st.sampled_from(["kty", "crv", "alg", "use", "key_ops", "kid", "n", "e", "x", "y"])
JWK_VALUES = JSON | st.sampled_from(["RSA", "EC", "oct", "P-256", "RS256", "ES256", "sig", "AQAB"])


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.dictionaries(JWK_MEMBERS, JWK_VALUES, max_size=7) | JSON, max_size=4))
def test_any_key_set_parses_or_is_refused_never_crashes(keys: list[Any]) -> None:
    data = json.dumps({"keys": [*keys, jwk(RSA, "rsa-1")]}).encode()
    parsed = parse_jwks(data, "test")  # one good key: never refused as a whole
    assert any(e.kid == "rsa-1" and e.key is not None for e in parsed.entries)
    try:
        alone = parse_jwks(json.dumps({"keys": keys}).encode(), "test")
    except ValueError as exc:
        assert str(exc).startswith("test: ")
    else:
        assert any(e.key is not None for e in alone.entries)
