"""API tokens: only a hash kept, shown once, expiry and revocation, each refusal with its reason."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pacsguard.archive import tokens
from pacsguard.archive.config import Settings, build_settings
from pacsguard.archive.security.principal import Action
from pacsguard.archive.security.verified import VerifiedIdentity
from pacsguard.errors import AuthenticationError, ConfigError

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_token_verifies_until_it_expires_or_is_revoked(tmp_path: Path) -> None:
    store = tmp_path / tokens.TOKENS_FILE
    record, token = tokens.issue(store, "bob", days=30, now=NOW)
    other, other_token = tokens.issue(store, "carol", days=1, now=NOW)
    assert token.startswith(f"pgt_{record.id}_") and len(token) == 4 + 12 + 1 + 43
    assert tokens.PREFIX == "pgt_"  # a JWT starts "eyJ": routed by prefix, never tried both
    text = store.read_text()
    assert token not in text and token.split("_", 2)[2] not in text  # the hash only
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    records = tokens.load(store)
    assert tokens.verify(records, token, NOW) == record
    assert tokens.verify(records, other_token, NOW) == other
    refusals = {
        token[:-1] + ("A" if token[-1] != "A" else "B"): "wrong secret",
        f"pgt_{record.id}_{other_token.split('_', 2)[2]}": "wrong secret",
        f"pgt_{'0' * 12}_{token.split('_', 2)[2]}": "unknown id",
        "Bearer " + token: "malformed",
        token + "A": "malformed",
        token.upper(): "malformed",
    }
    for presented, why in refusals.items():
        with pytest.raises(AuthenticationError, match=why) as refused:
            tokens.verify(records, presented, NOW)
        assert token.split("_", 2)[2] not in refused.value.reason  # never echoes a secret
    with pytest.raises(AuthenticationError, match=f"{record.id}: expired on "):
        tokens.verify(records, token, NOW + timedelta(days=30))
    with pytest.raises(AuthenticationError, match="expired"):
        tokens.verify(records, other_token, NOW + timedelta(days=2))

    revoked = tokens.revoke(store, record.id, now=NOW + timedelta(hours=1))
    assert revoked.state(NOW) == "revoked"
    records = tokens.load(store)
    with pytest.raises(AuthenticationError, match="revoked on 2026-01-02T04:04:05"):
        tokens.verify(records, token, NOW)
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


def _settings(data_dir: Path, users: dict[str, list[str]]) -> Settings:
    return build_settings(
        {
            "storage": {"data_dir": str(data_dir)},
            "users": {name: {"roles": roles} for name, roles in users.items()},
            "roles": {"reader": ["find", "get"]},
        }
    )


def test_the_verifier_maps_a_token_to_its_user_and_sees_revocations_at_once(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, {"bob": ["reader"], "carol": ["modality"]})
    store = tokens.store_path(settings)
    assert store == tmp_path.absolute() / tokens.TOKENS_FILE
    moment = [NOW]
    verifier = tokens.ApiTokens(store, settings, clock=lambda: moment[0])
    with pytest.raises(AuthenticationError, match="unknown id"):  # no file yet: no tokens
        verifier.verify(f"pgt_{'a' * 12}_{'b' * 43}")

    record, token = tokens.issue(store, "bob", days=2, now=NOW)
    _, carols = tokens.issue(store, "carol", days=2, now=NOW)
    assert verifier.verify(token) == "bob"  # the gate's seam: the username
    identity = verifier.identity(token)
    assert identity == VerifiedIdentity(
        username="bob",
        permissions=frozenset({Action.FIND, Action.GET}),
        expires=NOW + timedelta(days=2),
        kind="api-token",
        credential_id=record.id,
    )
    assert verifier.identity(carols).permissions == {Action.ECHO, Action.STORE}

    tokens.revoke(store, record.id)  # as `pacsguard token revoke` does, while serving
    with pytest.raises(AuthenticationError, match="revoked"):
        verifier.verify(token)
    assert verifier.verify(carols) == "carol"
    moment[0] = NOW + timedelta(days=2)
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(carols)

    without_carol = tokens.ApiTokens(
        store, _settings(tmp_path, {"bob": ["reader"]}), clock=lambda: NOW
    )
    with pytest.raises(AuthenticationError, match="'carol' is no longer in \\[users\\]"):
        without_carol.identity(carols)
    assert without_carol.verify(carols) == "carol"  # the gate checks [users] itself

    store.write_text("{damaged")
    with pytest.raises(AuthenticationError, match="cannot be read"):
        verifier.verify(carols)
