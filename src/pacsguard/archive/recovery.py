"""Crash recovery at start-up, before any listener opens.

A store writes the blob first and the index row second, and acknowledges only after both. A
crash between the two leaves a blob that no index row points to: never acknowledged, so safe to
remove. At most one such blob can exist per association in flight, so recovery removes orphans
only when there are no more than that; more orphans mean something else happened (an index
restored from an old backup, a wrong index URL) and the archive refuses to start rather than
delete data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pacsguard.archive.blobs.folder import FolderBlobStore
from pacsguard.archive.index import IndexStore
from pacsguard.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recovery:
    temp_files_removed: int
    orphans_removed: int


def recover(index: IndexStore, blobs: FolderBlobStore, *, max_in_flight: int) -> Recovery:
    """Remove temp files and unacknowledged orphan blobs; refuse when orphans are too many."""
    temp = blobs.sweep_temp()
    indexed = {key for key, _sha, _size in index.all_blob_keys()}
    orphans = [key for key in blobs.keys() if key not in indexed]  # noqa: SIM118 - a method
    if len(orphans) > max_in_flight:
        raise ConfigError(
            f"{len(orphans)} stored objects have no index entry (at most {max_in_flight} can be "
            "left by a crash); is storage.index_url the right index? Run `pacsguard fsck` and "
            "restore the index before starting"
        )
    for key in orphans:
        blobs.delete(key)
    if temp or orphans:
        log.warning(
            "recovered from an unclean stop: %d temporary files and %d unacknowledged objects "
            "removed",
            temp,
            len(orphans),
        )
    return Recovery(temp, len(orphans))
