"""The unlock request protocol between `pacsguard unlock` and a running archive."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from pacsguard.archive.control import (
    ANSWER,
    MARKER,
    RELOAD_ANSWER,
    RELOAD_REQUEST,
    REQUEST,
    answer_reload,
    answer_unlock,
    running_pid,
    write_marker,
)
from pacsguard.errors import ConfigError, UsageError


def test_a_request_is_carried_out_once_and_answered(tmp_path: Path) -> None:
    asked: list[Sequence[str] | None] = []

    def lift(addresses: Sequence[str] | None) -> list[str]:
        asked.append(addresses)
        return ["127.0.0.1"]

    (tmp_path / REQUEST).write_text('["127.0.0.1"]')
    assert answer_unlock(tmp_path, lift) == ["127.0.0.1"]
    assert (tmp_path / ANSWER).read_text() == '["127.0.0.1"]'
    assert stat.S_IMODE((tmp_path / ANSWER).stat().st_mode) == 0o600
    assert not (tmp_path / REQUEST).exists()
    assert answer_unlock(tmp_path, lift) == []  # a signal without a request lifts nothing
    assert asked == [["127.0.0.1"]]


@pytest.mark.parametrize("text", ["not json", '{"all": true}', "[1, 2]", '"127.0.0.1"'])
def test_a_malformed_request_lifts_nothing(tmp_path: Path, text: str) -> None:
    (tmp_path / REQUEST).write_text(text)
    assert answer_unlock(tmp_path, lambda _: pytest.fail("must not lift")) == []
    assert not (tmp_path / REQUEST).exists()


def test_running_pid_refuses_a_missing_or_stale_marker(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no pacsguard archive is running"):
        running_pid(tmp_path)
    write_marker(tmp_path / MARKER)  # this process: pytest, not `pacsguard serve`
    assert (tmp_path / MARKER).read_text() == f"{os.getpid()}\n"
    with pytest.raises(UsageError, match="stale"):
        running_pid(tmp_path)


def test_a_reload_request_is_answered_once_with_the_outcome(tmp_path: Path) -> None:
    asked: list[str] = []

    def reload(requested_by: str) -> str:
        asked.append(requested_by)
        return "config reloaded"

    assert answer_reload(tmp_path, reload) is None  # SIGUSR1 for an unlock: no reload asked
    (tmp_path / RELOAD_REQUEST).write_text('{"uid": 1000, "pid": 5}')
    assert answer_reload(tmp_path, reload) == (True, "config reloaded")
    assert asked == ["pacsguard reload (uid 1000)"]
    assert json.loads((tmp_path / RELOAD_ANSWER).read_text()) == {
        "ok": True,
        "message": "config reloaded",
    }
    assert stat.S_IMODE((tmp_path / RELOAD_ANSWER).stat().st_mode) == 0o600
    assert not (tmp_path / RELOAD_REQUEST).exists()

    def refuse(requested_by: str) -> str:
        raise ConfigError("ae[0].auth: expected one of ...")

    (tmp_path / RELOAD_REQUEST).write_text("not json")
    assert answer_reload(tmp_path, refuse) is None  # malformed: nothing done
    (tmp_path / RELOAD_REQUEST).write_text("{}")
    assert answer_reload(tmp_path, refuse) == (False, "ae[0].auth: expected one of ...")
