"""The SQLite index as worker processes use it: WAL checkpoints in a background thread, and
several processes writing through one writer lock."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from pacsguard.archive.index import checkpoint
from pacsguard.archive.index.sql import SqlIndex

from .test_index_contract import rec


def _fill(index: SqlIndex, count: int) -> None:
    for n in range(count):
        index.add(rec(str(n), str(n // 10), str(n // 100), f"P{n // 100}"))


def test_commits_never_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "INTERVAL_S", 3600.0)  # the thread does not come round
    path = tmp_path / "index.sqlite3"
    index = SqlIndex(f"sqlite:///{path}", background_checkpoints=True)
    try:
        before = path.stat().st_size
        _fill(index, 400)  # some 3,000 WAL frames: SQLite alone checkpoints past 1,000
        assert path.stat().st_size == before  # everything is still in the WAL
        assert Path(f"{path}-wal").stat().st_size > 1000 * 4096
    finally:
        index.close()


def test_the_background_thread_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "INTERVAL_S", 0.2)
    path = tmp_path / "index.sqlite3"
    index = SqlIndex(f"sqlite:///{path}", background_checkpoints=True)
    try:
        before = path.stat().st_size
        _fill(index, 100)
        deadline = time.monotonic() + 10
        while path.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size > before  # copied into the database file
        assert len(list(index.all_blob_keys())) == 100
    finally:
        index.close()


def _writer(path: str, first: int, count: int) -> None:
    index = SqlIndex(f"sqlite:///{path}", shared_writers=True, background_checkpoints=True)
    try:
        for n in range(first, first + count):
            index.add(rec(str(n), str(n // 10), str(n // 100), f"P{n // 100}"))
    finally:
        index.close()


def test_two_processes_write_one_index_through_the_writer_lock(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    SqlIndex(f"sqlite:///{path}").close()  # created and migrated once
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=_writer, args=(str(path), i * 200, 200)) for i in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert (tmp_path / "index.sqlite3-writer.lock").exists()
    index = SqlIndex(f"sqlite:///{path}")
    try:
        assert len(list(index.all_blob_keys())) == 400
    finally:
        index.close()
