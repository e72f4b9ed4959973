"""API tokens for the DICOMweb front end: issued, listed and revoked by the CLI, verified here.

They are kept apart from pacsguard.toml, in ``DATA/api-tokens.json`` (0600, replaced
atomically), because they change far more often than the configuration and carry their own
lifecycle (expiry, revocation).

A token is ``pgt_<id>_<secret>``: the prefix tells an API token from a JWT without trying both
(the gate's `attempt.http_credentials` routes a bearer string by it), `id` (12 hex digits)
names it in lists, revocations and audit lines, `secret` is 256 random bits. Only the SHA-256
of the whole token is stored, and compared in constant time. Not a keyed hash and not a slow
one, on purpose: a key (pepper) or Argon2 protects guessable secrets from someone who reads
the file, and nobody can invert SHA-256 for 256 random bits; a plain digest keeps per-request
checks cheap and needs no key that could be lost. The token is shown once, when issued.

`ApiTokens` (the gate's `ApiTokenVerifier`) re-reads the file when it changes, so a
`pacsguard token revoke` applies to the next request, and refuses unknown, wrong, revoked and
expired tokens (`identity` also tokens of users no longer in ``[users]``, whose roles give
the permissions, as for DIMSE). The DICOMweb front end reaches it through the gate
(``Authorization: Bearer pgt_...``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from pacsguard.archive.admin import folder_lock, replace_file
from pacsguard.archive.config import DataLayout, Settings
from pacsguard.archive.security.peer_text import shown
from pacsguard.archive.security.verified import VerifiedIdentity
from pacsguard.errors import AuthenticationError, ConfigError

TOKENS_FILE: Final = "api-tokens.json"
#: Tells an API token from a JWT (which starts "eyJ", base64url of '{"') without trying both.
PREFIX: Final = "pgt_"
_ID: Final = re.compile(r"^[0-9a-f]{12}$")
_TOKEN: Final = re.compile(r"^pgt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAX_DAYS: Final = 3650


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What is stored about a token: never the token itself."""

    id: str
    username: str
    sha256: str
    created: str  # ISO 8601, UTC
    expires: str
    revoked: str | None = None

    def state(self, now: datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        return "expired" if now >= datetime.fromisoformat(self.expires) else "active"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def load(path: Path) -> list[TokenRecord]:
    """The stored records ([] when there is no file yet); ConfigError for a damaged file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    try:
        return [TokenRecord(**entry) for entry in raw["tokens"]]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unexpected content ({exc}); restore it from a backup") from None


def _save(path: Path, records: list[TokenRecord]) -> None:
    data = json.dumps({"tokens": [asdict(r) for r in records]}, indent=2) + "\n"
    replace_file(path, data.encode("utf-8"), load)  # check: it reads back


def issue(
    path: Path, username: str, *, days: int, now: datetime | None = None
) -> tuple[TokenRecord, str]:
    """Create a token for `username` valid `days` days: (its record, the token, to show once)."""
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"token lifetime {days} days: expected 1 to {MAX_DAYS}")
    moment = now or datetime.now(UTC)
    with folder_lock(path.absolute().parent):
        return _issue(path, username, days, moment)


def _issue(path: Path, username: str, days: int, moment: datetime) -> tuple[TokenRecord, str]:
    records = load(path)
    token_id = secrets.token_hex(6)
    while any(r.id == token_id for r in records):  # pragma: no cover - 48 random bits
        token_id = secrets.token_hex(6)
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    record = TokenRecord(
        id=token_id,
        username=username,
        sha256=_digest(token),
        created=moment.isoformat(timespec="seconds"),
        expires=(moment + timedelta(days=days)).isoformat(timespec="seconds"),
    )
    _save(path, [*records, record])
    return record, token


def revoke(path: Path, token_id: str, *, now: datetime | None = None) -> TokenRecord:
    """Mark a token revoked (kept in the list, so that its history stays visible)."""
    if not _ID.match(token_id):
        raise ConfigError(f"token id {token_id!r}: expected 12 hex digits (see `token list`)")
    with folder_lock(path.absolute().parent):
        return _revoke(path, token_id, now)


def _revoke(path: Path, token_id: str, now: datetime | None) -> TokenRecord:
    records = load(path)
    for i, record in enumerate(records):
        if record.id == token_id:
            if record.revoked is not None:
                raise ConfigError(f"token {token_id} was revoked on {record.revoked}")
            moment = (now or datetime.now(UTC)).isoformat(timespec="seconds")
            records[i] = replace(record, revoked=moment)
            _save(path, records)
            return records[i]
    raise ConfigError(f"no token {token_id} (see `pacsguard token list`)")


def verify(records: list[TokenRecord], presented: str, now: datetime) -> TokenRecord:
    """The active record the presented token belongs to; AuthenticationError saying why not
    (not an API token, unknown id, wrong secret, revoked, expired)."""
    match = _TOKEN.match(presented)
    if match is None:
        # Not echoed: a mistyped token still holds most of its secret.
        raise AuthenticationError("API token malformed: expected pgt_<12 hex>_<43 characters>")
    token_id = match.group(1)
    record = next((r for r in records if r.id == token_id), None)
    if record is None:
        raise AuthenticationError(f"API token {token_id}: unknown id")
    if not hmac.compare_digest(record.sha256, _digest(presented)):
        raise AuthenticationError(f"API token {token_id}: wrong secret")
    if record.revoked is not None:
        raise AuthenticationError(f"API token {token_id}: revoked on {record.revoked}")
    if record.state(now) == "expired":
        raise AuthenticationError(f"API token {token_id}: expired on {record.expires}")
    return record


def store_path(settings: Settings) -> Path:
    """Where the tokens of the archive run with `settings` are kept."""
    return DataLayout(settings.storage.data_dir).data_dir / TOKENS_FILE


class ApiTokens:
    """The API tokens of one archive. Fits the gate's seam (`security.verifiers`
    `ApiTokenVerifier`: `verify(token) -> username`); `identity` adds the user's permissions,
    the expiry and the token id. Thread-safe; the file is read again whenever its size, time
    or inode change, so a revocation applies to the next request."""

    def __init__(
        self,
        path: Path,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._path = path
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._records: list[TokenRecord] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiTokens:
        return cls(store_path(settings), settings)

    def verify(self, credential: str) -> str:
        """The username an active token was issued to, or AuthenticationError."""
        return verify(self._current(), credential, self._clock()).username

    def identity(self, credential: str) -> VerifiedIdentity:
        """Who an active token acts as and what that user's roles allow; AuthenticationError
        also when the user is no longer in ``[users]``."""
        record = verify(self._current(), credential, self._clock())
        permissions = self._settings.user_permissions(record.username)
        if permissions is None:
            raise AuthenticationError(
                f"API token {record.id}: user {shown(record.username)} is no longer in [users]"
            )
        return VerifiedIdentity(
            username=record.username,
            permissions=permissions,
            expires=datetime.fromisoformat(record.expires),
            kind="api-token",
            credential_id=record.id,
        )

    def _current(self) -> list[TokenRecord]:
        """The stored records, read again when the file changed; AuthenticationError (every
        token refused) while it cannot be read."""
        with self._lock:
            try:
                st = self._path.stat()
            except FileNotFoundError:
                self._seen, self._records = None, []
                return []
            except OSError as exc:
                raise AuthenticationError(f"API tokens: {self._path}: {exc.strerror}") from None
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
            if seen != self._seen:
                try:
                    self._records = load(self._path)
                except (ConfigError, OSError) as exc:
                    raise AuthenticationError(f"API tokens cannot be read: {exc}") from None
                self._seen = seen
            return self._records
