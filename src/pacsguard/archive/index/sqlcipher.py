"""The embedded SQLite index encrypted at rest with SQLCipher.

Every SQLite index is opened through the `sqlcipher3` driver, which bundles its own, recent
SQLite with SQLCipher; without a key it is plain SQLite. With a key, every page of the index
file and of its write-ahead log is encrypted (AES-256-CBC) and authenticated (HMAC-SHA512).
The key is raw (`PRAGMA key = "x'..'"`): SQLCipher then skips its passphrase KDF, so a new
connection costs no PBKDF2 run. Temporary tables and sort spills stay in memory
(`temp_store = MEMORY`, set by the index for every connection), never in the temp folder.

An index created unencrypted by an older pacsguard is encrypted in place the first time it is
opened with a key (`encrypt_plaintext_index`): SQLCipher's `sqlcipher_export` copies it into a
new encrypted file in the same folder, which then replaces it. The archive must be stopped
meanwhile (the export takes the database exclusively and fails on a busy one).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from pacsguard.errors import ConfigError

log = logging.getLogger(__name__)

#: SQLCipher's raw key size: 256 bits.
KEY_BYTES: Final = 32
#: The first bytes of every unencrypted SQLite database file.
PLAINTEXT_MAGIC: Final = b"SQLite format 3\x00"
ENCRYPTING_SUFFIX: Final = ".encrypting"


def dbapi() -> ModuleType:
    """The SQLCipher DB-API module (sqlcipher3, imported when a SQLite index is opened)."""
    import sqlcipher3.dbapi2

    module: ModuleType = sqlcipher3.dbapi2
    return module


def check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"the index key must be {KEY_BYTES} bytes")


def _key_literal(key: bytes) -> str:
    return f"x'{key.hex()}'"


def apply_key(dbapi_connection: Any, key: bytes) -> None:
    """Key a fresh SQLCipher connection: before any statement that reads the database."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f'PRAGMA key = "{_key_literal(key)}"')
        cursor.execute("PRAGMA cipher_log_level = NONE")  # a wrong key is our ConfigError
    finally:
        cursor.close()


def is_plaintext(path: Path) -> bool:
    """Whether `path` is an unencrypted SQLite database (an empty or new file is not)."""
    try:
        with path.open("rb") as file:
            return file.read(len(PLAINTEXT_MAGIC)) == PLAINTEXT_MAGIC
    except FileNotFoundError:
        return False


def _remove_with_sidecars(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encrypt_plaintext_index(path: Path, key: bytes) -> None:
    """Replace the unencrypted SQLite index at `path` by an encrypted copy keyed with `key`.

    Crash-safe: the copy is written beside it (`<index>.encrypting`, mode 0600), synced, and
    renamed over the original; a crash before the rename leaves the original untouched and the
    next start begins again. Raises ConfigError when another process holds the index."""
    check_key(key)
    module = dbapi()
    target = Path(f"{path}{ENCRYPTING_SUFFIX}")
    _remove_with_sidecars(target)  # what an interrupted attempt left
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    connection = module.connect(str(path), isolation_level=None, timeout=0.0)
    try:
        try:
            # Back from WAL to a rollback journal: checkpoints every committed transaction
            # into the main file and removes the -wal file; it needs the database to ourselves.
            (mode,) = connection.execute("PRAGMA journal_mode = DELETE").fetchone()
        except module.OperationalError as exc:
            mode = str(exc)
        if mode != "delete":  # SQLite answers the old mode when it could not change it
            raise ConfigError(
                f"the index {path} is unencrypted and must be encrypted before use, but another "
                f"process holds it ({mode}); stop every pacsguard process using "
                f"{path.parent} and start again"
            )
        connection.execute("ATTACH DATABASE ? AS encrypted KEY ?", (str(target), _key_literal(key)))
        connection.execute("BEGIN EXCLUSIVE")  # nobody writes to the original meanwhile
        connection.execute("SELECT sqlcipher_export('encrypted')").fetchall()
        connection.execute("COMMIT")
        connection.execute("DETACH DATABASE encrypted")
    except BaseException:
        connection.close()
        _remove_with_sidecars(target)
        raise
    connection.close()
    _fsync_path(target)
    os.replace(target, path)
    for suffix in ("-wal", "-shm", "-journal"):  # the plaintext's, if any survived
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()
    _fsync_path(path.parent, directory=True)
    log.warning(
        "the index %s was unencrypted (written by an older pacsguard); it is now encrypted "
        "with SQLCipher. Blocks of the old file may survive on the disk until overwritten: "
        "where that matters, move the data folder to a new encrypted volume",
        path,
    )
