"""The embedded index encrypted at rest (SQLCipher): nothing in clear in its files, the wrong
key refused with a clear error, and an older unencrypted index encrypted in place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.archive.index.sql import SqlIndex
from pacsguard.archive.index.sqlcipher import ENCRYPTING_SUFFIX, is_plaintext
from pacsguard.archive.model import AddOutcome
from pacsguard.dicom.levels import Level
from pacsguard.errors import ConfigError

from .conftest import INDEX_KEY
from .test_index_contract import CORPUS, rec

#: What the corpus holds that must never be readable in the index's files.
SECRETS = (b"Doe^John", b"DOE^JANE", b"House^Gregory", b"19700101", b"19851231", b"ACC_3%")


#: A process that opens an index, reads it, says "open" and waits.
HOLD_INDEX = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM instances").fetchone()
print("open", flush=True)
sys.stdin.read()
"""


def _load(url: str, key: bytes | None) -> None:
    index = SqlIndex(url, key=key)
    try:
        for record in CORPUS:
            assert index.add(record) is AddOutcome.INSERTED
    finally:
        index.close()


def _found(folder: Path) -> set[bytes]:
    """The secrets readable in any file of `folder`, in UTF-8 as SQLite stores text."""
    return {s for f in folder.iterdir() if f.is_file() for s in SECRETS if s in f.read_bytes()}


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_an_encrypted_index_and_its_wal_hold_nothing_in_clear(tmp_path: Path) -> None:
    plain, encrypted = tmp_path / "plain", tmp_path / "encrypted"
    plain.mkdir()
    encrypted.mkdir()
    index = SqlIndex(_url(encrypted / "index.db"), key=INDEX_KEY)
    try:
        for record in CORPUS:
            index.add(record)
        # While it runs, the rows sit in the WAL: encrypted too.
        assert (encrypted / "index.db-wal").stat().st_size > 0
        assert _found(encrypted) == set()
        assert index.encrypted
    finally:
        index.close()
    assert _found(encrypted) == set()
    assert not is_plaintext(encrypted / "index.db")
    _load(_url(plain / "index.db"), None)  # the same scan finds them in an unencrypted index
    assert _found(plain) == set(SECRETS)


def test_an_encrypted_index_keeps_wal_and_durability_on_every_connection(tmp_path: Path) -> None:
    index = SqlIndex(_url(tmp_path / "i.db"), key=INDEX_KEY)
    try:
        index.add(rec("1", "11", "1", "P1"))
        index.add(rec("2", "11", "1", "P1"))  # through a driver connection of its own
        (driver,) = index._driver_insert._idle
        with index._engine.connect() as conn:
            engine_side = [
                conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "synchronous", "foreign_keys", "temp_store")
            ]
        driver_side = [
            driver.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "synchronous", "foreign_keys", "temp_store")
        ]
        assert engine_side == driver_side == ["wal", 2, 1, 2]  # temp_store 2: MEMORY
        assert driver.execute("PRAGMA cipher_version").fetchone()[0]  # SQLCipher, keyed
    finally:
        index.close()


def test_the_wrong_key_or_no_key_is_refused_clearly_and_loses_nothing(tmp_path: Path) -> None:
    url = _url(tmp_path / "i.db")
    _load(url, INDEX_KEY)
    before = (tmp_path / "i.db").read_bytes()
    with pytest.raises(ConfigError, match="encrypted with another key"):
        SqlIndex(url, key=bytes(32))
    with pytest.raises(ConfigError, match="encrypt_at_rest = true"):
        SqlIndex(url)
    assert (tmp_path / "i.db").read_bytes() == before
    index = SqlIndex(url, key=INDEX_KEY)
    try:
        assert len(index.instances(Level.PATIENT, "P1")) == 6
    finally:
        index.close()
    with pytest.raises(ValueError, match="32 bytes"):
        SqlIndex(_url(tmp_path / "other.db"), key=b"short")


def test_an_unencrypted_index_is_encrypted_in_place_on_open(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    _load(_url(path), None)
    assert is_plaintext(path) and _found(tmp_path)
    index = SqlIndex(_url(path), key=INDEX_KEY)
    try:
        assert not is_plaintext(path)
        assert index.get("1.2.3.7") == CORPUS[6]  # every row came across
        assert len(index.instances(Level.PATIENT, "P1")) == 6
        assert index.add(rec("9", "91", "9", "P9")) is AddOutcome.INSERTED
    finally:
        index.close()
    assert _found(tmp_path) == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.db"]
    mode = path.stat().st_mode & 0o777
    assert mode == 0o600


def test_an_interrupted_encryption_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    _load(_url(path), None)
    leftover = Path(f"{path}{ENCRYPTING_SUFFIX}")
    leftover.write_bytes(b"half an export")  # as a crash before the rename leaves it
    SqlIndex(_url(path), key=INDEX_KEY).close()
    assert not leftover.exists() and not is_plaintext(path)
    index = SqlIndex(_url(path), key=INDEX_KEY)
    try:
        assert len(index.instances(Level.PATIENT, "P1")) == 6
    finally:
        index.close()


def test_an_unencrypted_index_in_use_is_left_alone_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    _load(_url(path), None)
    # An older pacsguard still running on it, idle between two queries.
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_INDEX, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
            with pytest.raises(ConfigError, match="another process holds it"):
                SqlIndex(_url(path), key=INDEX_KEY)
        finally:
            holder.kill()
    assert is_plaintext(path)
    assert not Path(f"{path}{ENCRYPTING_SUFFIX}").exists()
    index = SqlIndex(_url(path), key=INDEX_KEY)  # once it has stopped
    try:
        assert len(index.instances(Level.PATIENT, "P1")) == 6
    finally:
        index.close()
