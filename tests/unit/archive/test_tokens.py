"""API tokens: only a hash kept, shown once, expiry and revocation (no front end uses them yet)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pacsguard.archive import tokens
from pacsguard.errors import ConfigError

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_token_verifies_until_it_expires_or_is_revoked(tmp_path: Path) -> None:
    store = tmp_path / tokens.TOKENS_FILE
    record, token = tokens.issue(store, "bob", days=30, now=NOW)
    other, other_token = tokens.issue(store, "carol", days=1, now=NOW)
    assert token.startswith(f"pgt_{record.id}_") and len(token) == 4 + 12 + 1 + 43
    text = store.read_text()
    assert token not in text and token.split("_", 2)[2] not in text  # the hash only
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    records = tokens.load(store)
    assert tokens.verify(records, token, NOW) == record
    assert tokens.verify(records, other_token, NOW) == other
    assert tokens.verify(records, token[:-1] + ("A" if token[-1] != "A" else "B"), NOW) is None
    assert tokens.verify(records, f"pgt_{record.id}_{other_token.split('_', 2)[2]}", NOW) is None
    assert tokens.verify(records, "Bearer " + token, NOW) is None
    assert tokens.verify(records, token, NOW + timedelta(days=30)) is None  # expired
    assert tokens.verify(records, other_token, NOW + timedelta(days=2)) is None

    revoked = tokens.revoke(store, record.id, now=NOW + timedelta(hours=1))
    assert revoked.state(NOW) == "revoked"
    records = tokens.load(store)
    assert tokens.verify(records, token, NOW) is None
    assert tokens.verify(records, other_token, NOW) == other  # the other one is untouched
    assert [r.state(NOW) for r in records] == ["revoked", "active"]
    with pytest.raises(ConfigError, match="was revoked"):
        tokens.revoke(store, record.id)
    with pytest.raises(ConfigError, match="no token"):
        tokens.revoke(store, "0" * 12)
    with pytest.raises(ConfigError, match="12 hex digits"):
        tokens.revoke(store, "../../etc")


def test_bad_lifetimes_and_a_damaged_store_are_refused(tmp_path: Path) -> None:
    store = tmp_path / tokens.TOKENS_FILE
    for days in (0, -1, tokens.MAX_DAYS + 1):
        with pytest.raises(ConfigError, match="lifetime"):
            tokens.issue(store, "bob", days=days)
    assert not store.exists()
    store.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        tokens.issue(store, "bob", days=1)
    assert store.read_text() == "{not json"  # left as it was
    store.write_text('{"tokens": [{"id": 1}]}')
    with pytest.raises(ConfigError, match="unexpected content"):
        tokens.load(store)
