"""WAL checkpoints off the commit path, for the SQLite index.

SQLite checkpoints on its own (`wal_autocheckpoint`, 1000 pages): the commit that crosses the
threshold then copies the WAL into the database file and syncs it before it returns, and the
C-STORE waiting on that commit waits too (and every store queued behind its write lock). With
`Checkpointer` the index's connections turn that off and one background thread runs a PASSIVE
checkpoint every `interval` seconds instead: it never blocks writers or readers, and a commit
never waits for one. Durability is unchanged: a commit is durable once its WAL frames are
synced (synchronous=FULL), checkpointed or not.

Used with ``[server] workers`` > 1 (`app.open_storage`), where a checkpoint inside one worker's
commit would hold the writer lock all workers share. With one process the benchmarks showed no
difference either way (ingest 0.85-1.16x, sustained load store p99 81 ms both), so it keeps
SQLite's own checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger(__name__)

#: Seconds between checkpoints. At ~1,000 small stores/s the WAL grows by a few MiB meanwhile.
INTERVAL_S: Final = 0.5


class Checkpointer:
    """A daemon thread: `PRAGMA wal_checkpoint(PASSIVE)` every `interval` seconds on a
    connection from `connect`, until `close`."""

    def __init__(self, connect: Callable[[], Any], interval: float | None = None) -> None:
        self._connect = connect
        self._interval = INTERVAL_S if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection: Any = None
        failed = False
        while not self._stop.wait(self._interval):
            try:
                if connection is None:
                    connection = self._connect()
                cursor = connection.cursor()
                try:
                    cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    cursor.fetchall()
                finally:
                    cursor.close()
                failed = False
            except Exception as exc:  # a busy or lost database: the next round tries again
                if not failed:
                    log.warning("index checkpoint failed (%s); retrying", exc.__class__.__name__)
                failed = True
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
                    connection = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
