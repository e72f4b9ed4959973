"""Handing accepted DIMSE connections from a supervisor to its worker processes.

With ``[server] workers`` > 1 the supervisor accepts every DIMSE connection and passes it (the
file descriptor, SCM_RIGHTS over a Unix socket pair, with the index of the listener that took
it) to the worker serving the fewest connections. Why not let every worker accept on the
shared listening socket: asyncio accepts every queued connection at each wake-up, so the
worker that wakes first takes them all (measured: 3 of 4 storescu on one worker, the other
half idle), and SO_REUSEPORT spreads by a hash of addresses and ports, no better for a few
long associations. Each worker reports the end of each connection with one byte, which is
how the supervisor knows the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final

log = logging.getLogger(__name__)

_INDEX: Final = struct.Struct(">B")
#: Descriptors taken per receive at most.
_BATCH: Final = 16


class WorkerHandoff:
    """A worker's end: adopts the connections the supervisor passes, reports their ends."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send_lock = threading.Lock()

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        adopt: Callable[[int, socket.socket], Coroutine[Any, Any, None]],
    ) -> None:
        """Call `adopt(listener_index, connection)` on `loop` for each connection passed."""
        self._loop = loop
        tasks: set[asyncio.Task[None]] = set()

        def readable() -> None:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._sock, _INDEX.size * _BATCH, _BATCH)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("connection hand-off from the supervisor failed: %s", exc)
                loop.remove_reader(self._sock.fileno())
                return
            if not data:  # the supervisor is gone
                loop.remove_reader(self._sock.fileno())
                for fd in fds:
                    socket.close(fd)
                return
            for position, fd in enumerate(fds):
                index = data[position] if position < len(data) else 0
                connection = socket.socket(fileno=fd)
                task = loop.create_task(adopt(index, connection))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        loop.add_reader(self._sock.fileno(), readable)

    def ended(self) -> None:
        """One connection passed to us has ended."""
        with self._send_lock, contextlib.suppress(OSError):
            self._sock.send(b".")

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._sock.fileno())
        self._sock.close()


def pass_connection(channel: socket.socket, listener_index: int, connection: socket.socket) -> None:
    """The supervisor's end: pass `connection` (accepted on listener `listener_index`)."""
    socket.send_fds(channel, [_INDEX.pack(listener_index)], [connection.fileno()])
