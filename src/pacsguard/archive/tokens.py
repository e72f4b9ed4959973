"""API tokens for the DICOMweb front end: issued, listed and revoked by the CLI, presented as
``Authorization: Bearer pgt_...`` (`archive.web._auth`). They are kept apart from
pacsguard.toml, in ``DATA/api-tokens.json`` (0600, replaced atomically), because they change
far more often than the configuration and carry their own lifecycle (expiry, revocation).

A token is ``pgt_<id>_<secret>``: `id` (12 hex digits) names it in lists and revocations,
`secret` is 256 random bits. Only the SHA-256 of the whole token is stored: a slow password
hash adds nothing against guessing 256 random bits, and a fast one keeps per-request checks
cheap. The token is shown once, when issued. `verify` compares digests in constant time and
refuses revoked and expired tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from pacsguard.archive.admin import folder_lock, replace_file
from pacsguard.errors import ConfigError

TOKENS_FILE: Final = "api-tokens.json"
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


def verify(records: list[TokenRecord], presented: str, now: datetime) -> TokenRecord | None:
    """The active record the presented token belongs to, or None (unknown, wrong secret,
    revoked or expired)."""
    match = _TOKEN.match(presented)
    if match is None:
        return None
    digest = _digest(presented)
    for record in records:
        if record.id == match.group(1) and hmac.compare_digest(record.sha256, digest):
            return record if record.state(now) == "active" else None
    return None
