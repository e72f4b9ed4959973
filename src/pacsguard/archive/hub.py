"""The hub: the state that several worker processes share, held by their supervisor.

With ``[server] workers`` above 1, `pacsguard serve` is a supervisor (`archive.workers`) and N
worker processes that each run the whole archive (DIMSE and DICOMweb front ends, service, index,
blobs) on listening sockets the supervisor bound. What must be one for the archive to keep its
promises lives in the supervisor and is served to the workers over a Unix socket in the private
data folder (0600):

- the audit log: the supervisor is its one writer, so the chain stays one file; a worker's
  `HubAuditSink.emit_deferred` returns once the supervisor has written its line (or raises
  AuditLogError, failing the operation closed) and its waiter once the line is synced; the
  supervisor's syncer commits the lines of all workers together (group commit);
- lockout counts per source and per account (`HubLockout`), so that guessing spread over the
  workers is counted once;
- association slots (`HubSlots`): the global, per-AE and per-user caps hold across workers. A
  worker's slots are given back when its connection to the hub ends (it died).

Wire format: each message is a 4-byte big-endian length and a JSON object; requests carry an
``id`` the answers repeat. An audit request is answered twice: "written" (or an error), then
"durable" (or an error). Why not multiprocessing.Manager or similar: the audit answer comes in
two steps and a dead worker must give its slots back; the protocol is four message types.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final

from pacsguard.archive.audit.chain import event_fields, event_from_fields
from pacsguard.archive.audit.events import AuditEvent, AuditSink
from pacsguard.archive.audit.notify import Waiter, emit_deferred
from pacsguard.archive.dimse.slots import AssociationSlots
from pacsguard.archive.security.lockout import Lockout
from pacsguard.errors import AuditLogError

log = logging.getLogger(__name__)

_LENGTH: Final = struct.Struct(">I")
#: Largest message accepted (an audit event is a few hundred bytes).
MAX_MESSAGE: Final = 1 << 20
_LOCKOUT_METHODS: Final = frozenset({"locked", "record_failure", "reset", "locked_among", "lift"})


class HubError(Exception):
    """The hub cannot be reached (the supervisor is gone) or refused a request."""


def _send(sock: socket.socket, message: dict[str, Any], lock: threading.Lock) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    with lock:
        sock.sendall(_LENGTH.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or None when the other side closed."""
    head = _recv_exactly(sock, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    if size > MAX_MESSAGE:
        raise HubError(f"hub message of {size} bytes refused")
    body = _recv_exactly(sock, size)
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise HubError("hub message is not an object")
    return message


# -- the supervisor's side ------------------------------------------------------------------------
class Hub:
    """Serves `audit`, `lockout` and `slots` to worker processes on a Unix socket at `path`."""

    def __init__(
        self,
        path: Path,
        audit: AuditSink,
        lockout: Lockout,
        slots: AssociationSlots,
        on_ready: Callable[[int], None] = lambda _worker: None,
    ) -> None:
        self.path = path
        self._audit = audit
        self._lockout = lockout
        self._slots = slots
        self._on_ready = on_ready
        path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(str(path))
        finally:
            os.umask(old_umask)
        self._listener.listen(64)
        self._closing = False
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="hub-accept", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="hub-worker", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        """One worker's requests, in order; its durable answers come from a second thread."""
        send_lock = threading.Lock()
        durable: queue.Queue[tuple[int, Waiter] | None] = queue.Queue()
        syncer = threading.Thread(
            target=self._answer_durable, args=(conn, send_lock, durable), daemon=True
        )
        syncer.start()
        held_slots = 0
        held_peers: list[tuple[str, str | None]] = []
        try:
            while (message := _recv(conn)) is not None:
                ident, op = int(message.get("id") or 0), message.get("op")
                answer: dict[str, Any] = {"id": ident}
                if op == "audit":
                    try:
                        waiter = emit_deferred(self._audit, event_from_fields(message["event"]))
                    except AuditLogError as exc:
                        answer["error"] = str(exc)
                    except (KeyError, ValueError, TypeError) as exc:
                        answer["error"] = f"malformed audit event: {exc}"
                    else:
                        answer["written"] = True
                        durable.put((ident, waiter))
                elif op == "lockout" and message.get("method") in _LOCKOUT_METHODS:
                    method = getattr(self._lockout, str(message["method"]))
                    answer["result"] = method(*message.get("args", ()))
                elif op == "take":
                    answer["result"] = self._slots.take_now()
                    held_slots += bool(answer["result"])
                elif op == "give":
                    if held_slots > 0:
                        held_slots -= 1
                        self._slots.give_now()
                    continue
                elif op in ("take_peer", "give_peer"):
                    peer = (str(message["ae_title"]), message.get("username"))
                    if op == "take_peer":
                        answer["result"] = self._slots.take_peer_now(*peer)
                        if answer["result"] is None:
                            held_peers.append(peer)
                    else:
                        if peer in held_peers:
                            held_peers.remove(peer)
                            self._slots.give_peer_now(*peer)
                        continue
                elif op == "ready":
                    self._on_ready(int(message.get("worker", -1)))
                    continue
                else:
                    answer["error"] = f"unknown request {op!r}"
                _send(conn, answer, send_lock)
        except (OSError, HubError, ValueError) as exc:
            if not self._closing:
                log.warning("hub: a worker's connection ended: %s", exc)
        finally:
            for _ in range(held_slots):  # a worker that died gives its slots back
                self._slots.give_now()
            for peer in held_peers:
                self._slots.give_peer_now(*peer)
            durable.put(None)
            syncer.join(timeout=5)
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _answer_durable(
        conn: socket.socket,
        send_lock: threading.Lock,
        pending: queue.Queue[tuple[int, Waiter] | None],
    ) -> None:
        while (item := pending.get()) is not None:
            ident, waiter = item
            answer: dict[str, Any] = {"id": ident}
            try:
                waiter()
                answer["durable"] = True
            except AuditLogError as exc:
                answer["error"] = str(exc)
            with contextlib.suppress(OSError):  # gone: keep draining, so the reader ends
                _send(conn, answer, send_lock)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


# -- the worker's side ----------------------------------------------------------------------------
class HubClient:
    """A worker's one connection to the hub: thread-safe requests, answers matched by id.

    `on_lost` runs once when the connection ends unexpectedly (the supervisor died): every
    request waiting then, and every later one, fails with HubError."""

    def __init__(self, path: Path, on_lost: Callable[[], None] = lambda: None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        #: Per request id: the futures of its answers (an audit request has two).
        self._waiting: dict[int, list[Future[dict[str, Any]]]] = {}
        self._lost: str | None = None
        self._closing = False
        self._on_lost = on_lost
        self._reader = threading.Thread(target=self._read_loop, name="hub-client", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        why = "the supervisor closed the connection"
        try:
            while (message := _recv(self._sock)) is not None:
                with self._lock:
                    futures = self._waiting.get(int(message.get("id", 0)))
                    if not futures:
                        continue
                    future = futures.pop(0)
                    if not futures:
                        del self._waiting[int(message["id"])]
                future.set_result(message)
        except (OSError, HubError, ValueError) as exc:
            why = str(exc)
        with self._lock:
            self._lost = why
            waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                future.set_exception(HubError(f"hub connection lost: {why}"))
        if not self._closing:
            log.error("worker lost its supervisor (%s): stopping", why)
            self._on_lost()

    def request(self, message: dict[str, Any], answers: int = 1) -> list[Future[dict[str, Any]]]:
        """Send `message`; the futures of its `answers` answers (none for a notice)."""
        ident = next(self._ids)
        futures: list[Future[dict[str, Any]]] = [Future() for _ in range(answers)]
        with self._lock:
            if self._lost is not None:
                raise HubError(f"hub connection lost: {self._lost}")
            if futures:
                self._waiting[ident] = list(futures)
        try:
            _send(self._sock, {**message, "id": ident}, self._send_lock)
        except OSError as exc:
            raise HubError(f"hub connection lost: {exc}") from None
        return futures

    def call(self, message: dict[str, Any]) -> Any:
        """One request, one answer: its result; HubError when the hub refused or is gone."""
        answer = self.request(message)[0].result()
        if "error" in answer:
            raise HubError(str(answer["error"]))
        return answer.get("result")

    def notify(self, message: dict[str, Any]) -> None:
        """A request without an answer; ignored when the hub is gone."""
        with contextlib.suppress(HubError):
            self.request(message, answers=0)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=5)
        self._sock.close()


class HubAuditSink:
    """A worker's primary audit sink: the supervisor's `AuditLog`, through the hub. Fails
    closed like the log itself: AuditLogError when the line is not written or not synced."""

    def __init__(self, client: HubClient) -> None:
        self._client = client

    def emit_deferred(self, event: AuditEvent) -> Waiter:
        try:
            written, durable = self._client.request(
                {"op": "audit", "event": event_fields(event)}, answers=2
            )
            answer = written.result()
        except HubError as exc:
            raise AuditLogError(f"audit log unreachable ({exc}); operation refused") from None
        if "error" in answer:
            raise AuditLogError(str(answer["error"]))

        def wait() -> None:
            try:
                synced = durable.result()
            except HubError as exc:
                raise AuditLogError(f"audit log unreachable ({exc}); operation refused") from None
            if "error" in synced:
                raise AuditLogError(str(synced["error"]))

        return wait

    def emit(self, event: AuditEvent) -> None:
        self.emit_deferred(event)()


class HubLockout:
    """The supervisor's `Lockout`, through the hub (a `LockoutCounter`)."""

    def __init__(self, client: HubClient) -> None:
        self._client = client

    def _call(self, method: str, *args: object) -> Any:
        return self._client.call({"op": "lockout", "method": method, "args": list(args)})

    def locked(self, key: str) -> bool:
        return bool(self._call("locked", key))

    def record_failure(self, key: str, tag: str | None = None) -> bool:
        return bool(self._call("record_failure", key, tag))

    def reset(self, key: str, tag: str | None = None) -> None:
        self._call("reset", key, tag)

    def locked_among(self, keys: Collection[str] | None = None) -> list[str]:
        return list(self._call("locked_among", None if keys is None else sorted(keys)))

    def lift(self, keys: Collection[str] | None = None) -> list[str]:
        return list(self._call("lift", None if keys is None else sorted(keys)))


class HubSlots:
    """The supervisor's `AssociationSlots`, through the hub (a `SlotCounter`): the answer is
    awaited on the event loop, not in a thread."""

    def __init__(self, client: HubClient) -> None:
        self._client = client

    async def _ask(self, message: dict[str, Any]) -> Any:
        answer = await asyncio.wrap_future(self._client.request(message)[0])
        if "error" in answer:
            raise HubError(str(answer["error"]))
        return answer.get("result")

    async def take(self) -> bool:
        try:
            return bool(await self._ask({"op": "take"}))
        except HubError:
            return False  # no supervisor: no new associations

    async def give(self) -> None:
        self._client.notify({"op": "give"})

    async def take_peer(self, ae_title: str, username: str | None) -> str | None:
        try:
            why = await self._ask({"op": "take_peer", "ae_title": ae_title, "username": username})
        except HubError as exc:
            return str(exc)
        return None if why is None else str(why)

    async def give_peer(self, ae_title: str, username: str | None) -> None:
        self._client.notify({"op": "give_peer", "ae_title": ae_title, "username": username})
