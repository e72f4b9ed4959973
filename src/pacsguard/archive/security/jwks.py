"""The issuer's JSON Web Key Set (RFC 7517): read from a file or fetched over HTTPS, cached.

`JwksCache.key(kid, alg)` returns the verification key a bearer JWT names, or raises
`AuthenticationError` saying why not. The set is fetched again when it is older than
`jwks_refresh_s`, and when a token names a kid it does not hold (a key rotation) — but at most
once per `jwks_cooldown_s` whatever asks, so that tokens with random kids cannot make us hammer
the issuer. When a fetch fails, the keys fetched last keep verifying until they are
`jwks_max_age_s` old; with none (or only older ones), tokens are refused and the reason names
the last fetch error.

Only keys fit to verify RS256 or ES256 signatures are usable: ``kty`` RSA, or EC on P-256;
``use`` absent or "sig"; ``key_ops`` absent or with "verify"; ``alg`` absent or the token's.
Other keys stay in the set with the reason they are unusable, so a token naming one is refused
with that reason. A set with symmetric (``oct``) keys is kept out the same way: an HMAC
secret has no business in a public key set.

Why not PyJWT's `PyJWKClient`: it fetches with blocking urllib on every unknown kid (no rate
limit), keeps no last-good set when the issuer is down, and reads proxy settings from the
environment. PyJWT's `PyJWK` still parses each key, and `jwt.decode` with a `PyJWK` binds the
algorithm to the key. Fetching uses httpx (TLS verified, optional CA file, no redirects, no
proxies from the environment, a bounded body). It is synchronous: the gate calls verifiers
from its executor thread, never on the event loop; one fetch runs at a time, the other
threads that need it wait for its result instead of fetching too.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt

from pacsguard.archive.config import JwtSettings
from pacsguard.archive.security.peer_text import shown
from pacsguard.errors import AuthenticationError, ConfigError

__all__ = ["ACCEPTED_ALGORITHMS", "JwksCache", "KeySet", "parse_jwks"]

#: Signature algorithms a bearer JWT may use. Never HS*: a JWKS holds public keys, and an HMAC
#: check keyed with a public key is the classic key-confusion forgery.
ACCEPTED_ALGORITHMS: Final = ("RS256", "ES256")
#: Largest JWKS document accepted, in bytes.
MAX_JWKS_BYTES: Final = 1_048_576
#: Seconds each step of a JWKS fetch may take (connect, TLS, each read), and all of it.
FETCH_TIMEOUT_S: Final = 5.0
FETCH_DEADLINE_S: Final = 10.0
#: Keys in one set at most.
MAX_KEYS: Final = 64

Fetch = Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class JwkEntry:
    """One key of the set: usable (`key`) or not (`unusable` says why)."""

    kid: str | None
    key: jwt.PyJWK | None
    unusable: str | None = None


@dataclass(frozen=True, slots=True)
class KeySet:
    """A parsed JWKS."""

    entries: tuple[JwkEntry, ...]

    def named(self, kid: str, alg: str | None = None) -> JwkEntry | None:
        """The key `kid`; among several with that kid (one RSA, one EC), the usable one for
        `alg` first."""
        named = [e for e in self.entries if e.kid == kid]
        fitting = [e for e in named if e.key is not None and e.key.algorithm_name == alg]
        return next(iter(fitting or named), None)

    def usable_for(self, alg: str) -> list[JwkEntry]:
        return [e for e in self.entries if e.key is not None and e.key.algorithm_name == alg]


def _entry(raw: object, index: int) -> JwkEntry:
    if not isinstance(raw, Mapping):
        return JwkEntry(None, None, f"keys[{index}] is not a JSON object")
    kid = raw.get("kid")
    kid = kid if isinstance(kid, str) else None

    def unusable(why: str) -> JwkEntry:
        return JwkEntry(kid, None, f"key {shown(kid) if kid else f'keys[{index}]'} {why}")

    kty, crv, alg, use, ops = (raw.get(k) for k in ("kty", "crv", "alg", "use", "key_ops"))
    if kty == "oct":
        return unusable("is a symmetric (oct) key; only RSA and EC P-256 public keys verify")
    if use is not None and use != "sig":
        return unusable(f"has use {shown(use)}, not 'sig'")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return unusable(f"has key_ops {shown(ops)} without 'verify'")
    if alg is not None and alg not in ACCEPTED_ALGORITHMS:
        return unusable(f"has alg {shown(alg)}; accepted: {', '.join(ACCEPTED_ALGORITHMS)}")
    if kty == "RSA":
        wanted = "RS256"
    elif kty == "EC" and crv == "P-256":
        wanted = "ES256"
    else:
        return unusable(f"is kty {shown(kty)} crv {shown(crv)}; only RSA and EC P-256 verify")
    if alg is not None and alg != wanted:
        return unusable(f"has alg {shown(alg)} but is a {kty} key")
    if "d" in raw:
        return unusable("holds a private key; publish the public part only")
    try:
        key = jwt.PyJWK(dict(raw), algorithm=wanted)
    except jwt.PyJWTError as exc:
        return unusable(f"cannot be read: {shown(exc)}")
    return JwkEntry(kid, key)


def parse_jwks(data: bytes, origin: str) -> KeySet:
    """Parse a JWKS document; ValueError (with `origin`) when it is not one."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{origin}: not JSON ({exc})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError(f'{origin}: not a JWKS (expected {{"keys": [...]}} with keys)')
    if len(keys) > MAX_KEYS:
        raise ValueError(f"{origin}: {len(keys)} keys, at most {MAX_KEYS}")
    entries = tuple(_entry(raw, i) for i, raw in enumerate(keys))
    if not any(e.key is not None for e in entries):
        reasons = "; ".join(e.unusable or "" for e in entries)
        raise ValueError(f"{origin}: no usable RS256/ES256 verification key ({reasons})")
    return KeySet(entries)


def read_file(path: Path) -> Fetch:
    def fetch() -> bytes:
        with path.open("rb") as f:
            return f.read(MAX_JWKS_BYTES + 1)

    return fetch


def fetch_url(url: str, ca_file: Path | None) -> Fetch:
    """A fetch of `url` over verified TLS (against `ca_file`, else the system's CAs)."""
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"jwt.jwks_ca_file = {str(ca_file)!r} cannot be used: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def fetch() -> bytes:
        import httpx  # only an archive with a JWKS URL fetches one

        try:
            deadline = time.monotonic() + FETCH_DEADLINE_S
            with (
                httpx.Client(
                    verify=context,
                    timeout=FETCH_TIMEOUT_S,
                    follow_redirects=False,
                    trust_env=False,
                    headers={"Accept": "application/json, application/jwk-set+json"},
                ) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != httpx.codes.OK:
                    raise OSError(f"HTTP {response.status_code} {response.reason_phrase}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        break
                    if time.monotonic() > deadline:  # a server that trickles its answer
                        raise OSError(f"no complete answer within {FETCH_DEADLINE_S:g} s")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc

    return fetch


class JwksCache:
    """The issuer's keys, refreshed on age and on unknown kids, rate-limited. Thread-safe."""

    def __init__(
        self,
        fetch: Fetch,
        origin: str,
        *,
        refresh_s: float,
        max_age_s: float,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch, self.origin = fetch, origin
        self._refresh_s, self._max_age_s, self._cooldown_s = refresh_s, max_age_s, cooldown_s
        self._clock = clock
        self._lock = threading.Lock()  # guards the state below
        self._fetching = threading.Lock()  # one fetch at a time
        self._keys: KeySet | None = None
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error: str | None = None
        self.fetches = 0  # attempts, for tests and the self-check

    @classmethod
    def from_settings(
        cls, settings: JwtSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> JwksCache:
        """The cache for `[jwt] jwks_file` or `jwks_url`. A file is read now (ConfigError when
        it is not a usable JWKS); a URL is fetched when first needed (or by `refresh`)."""
        if settings.jwks_file is not None:
            fetch, origin = read_file(settings.jwks_file), f"jwt.jwks_file {settings.jwks_file}"
        elif settings.jwks_url is not None:
            fetch, origin = fetch_url(settings.jwks_url, settings.jwks_ca_file), settings.jwks_url
        else:
            raise ConfigError("jwt.jwks_file or jwt.jwks_url: set one to accept bearer JWTs")
        cache = cls(
            fetch,
            origin,
            refresh_s=settings.jwks_refresh_s,
            max_age_s=settings.jwks_max_age_s,
            cooldown_s=settings.jwks_cooldown_s,
            clock=clock,
        )
        if settings.jwks_file is not None and not cache.refresh():
            raise ConfigError(f"{cache.last_error}; fix the file or jwt.jwks_file")
        return cache

    @property
    def last_error(self) -> str | None:
        with self._lock:
            return self._last_error

    def refresh(self) -> bool:
        """Fetch the set now unless one was attempted less than the cooldown ago (then wait
        for it when it is still running). Whether the last attempt succeeded."""
        with self._fetching:
            now = self._clock()
            with self._lock:
                recent = (
                    self._attempted_at is not None and now - self._attempted_at < self._cooldown_s
                )
                if recent:
                    return self._last_error is None
                self._attempted_at = now
                self.fetches += 1
            try:
                data = self._fetch()
                if len(data) > MAX_JWKS_BYTES:
                    raise ValueError(f"{self.origin}: larger than {MAX_JWKS_BYTES} bytes")
                keys = parse_jwks(data, self.origin)
            except (OSError, ValueError) as exc:
                text = str(exc) or type(exc).__name__  # httpx timeouts may say nothing
                error = text if text.startswith(self.origin) else f"{self.origin}: {text}"
                with self._lock:
                    self._last_error = f"JWKS fetch failed: {error}"
                return False
            with self._lock:
                self._keys, self._fetched_at, self._last_error = keys, now, None
            return True

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The usable key `kid` for a token signed with `alg`, or AuthenticationError."""
        keys, age = self._current()
        if keys is None or age is None or age >= self._refresh_s:
            self.refresh()
            keys, age = self._current()
        elif kid is not None and keys.named(kid) is None:
            self.refresh()  # a rotation, or a forgery: at most one fetch per cooldown
            keys, age = self._current()
        if keys is None or age is None:
            raise AuthenticationError(f"no issuer keys: {self.last_error or 'never fetched'}")
        if age >= self._max_age_s:
            raise AuthenticationError(
                f"issuer keys are {age:.0f} s old (jwt.jwks_max_age_s = {self._max_age_s:g}) "
                f"and cannot be refreshed: {self.last_error}"
            )
        try:
            return _pick(keys, kid, alg, self.origin)
        except AuthenticationError as exc:
            error = self.last_error
            if error is None:
                raise
            raise AuthenticationError(f"{exc.reason} (and the last {error})") from None

    def _current(self) -> tuple[KeySet | None, float | None]:
        with self._lock:
            if self._fetched_at is None:
                return self._keys, None
            return self._keys, self._clock() - self._fetched_at


def _pick(keys: KeySet, kid: str | None, alg: str, origin: str) -> jwt.PyJWK:
    if kid is None:
        candidates = keys.usable_for(alg)
        if len(candidates) != 1 or candidates[0].key is None:
            raise AuthenticationError(
                f"token has no kid and {len(candidates)} {alg} keys are in the JWKS; "
                "a kid is required unless exactly one key fits"
            )
        return candidates[0].key
    entry = keys.named(kid, alg)
    if entry is None:
        raise AuthenticationError(f"unknown kid {shown(kid)}: not in the JWKS from {origin}")
    if entry.key is None:
        raise AuthenticationError(f"{entry.unusable}")
    if entry.key.algorithm_name != alg:
        raise AuthenticationError(
            f"token alg {alg} does not match key {shown(kid)}, an {entry.key.algorithm_name} key"
        )
    return entry.key
