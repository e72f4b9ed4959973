"""Several worker processes behind one set of listeners (``[server] workers`` > 1).

One Python process is bound by its GIL to about one core: with several senders at once, the
archive's parsing, encryption and bookkeeping queue behind each other while the other core
idles. With ``workers = N`` `pacsguard serve` becomes a supervisor and N workers:

- The supervisor recovers from an unclean stop (`recovery.recover`), marks the archive running
  (`control.MARKER`, its pid: `pacsguard unlock` and `reload` signal it), binds every listening
  socket (DIMSE TLS and plaintext, DICOMweb) and starts the workers. It accepts each DIMSE
  connection itself and passes it to the worker serving the fewest (`dimse.handoff`), so
  associations spread evenly and a worker's restart refuses nobody. The DICOMweb socket is
  inherited by every worker, and each accepts on it (HTTP requests are short).
- Each worker runs the whole archive (`app.start_archive(worker=...)`): front ends, service,
  index (SQLite WAL across processes, or PostgreSQL) and blob store. What must be one lives in
  the supervisor and reaches the workers through the hub (`archive.hub`): the audit log (one
  writer, one chain; lines of all workers synced together), lockout counts, association slots.
- A worker that dies (a crash, kill -9) is restarted; what it had acknowledged is durable
  (blob, index row and audit line before the answer), and what it had not acknowledged leaves
  at most an unindexed blob that a later store of the same instance replaces; the running
  marker then stays after the stop, so that the next start runs crash recovery, which removes
  such blobs (not while other workers store).
- SIGHUP is passed on to every worker (each reloads its settings and audits it); SIGTERM or
  SIGINT stops the workers (each ends its associations as a single archive does), then writes
  the stop line and closes the log.

Self-check: the first worker scans the endpoints at start-up, as a single archive does.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pacsguard.archive.app import (
    WorkerParts,
    close_all,
    dimse_addresses,
    open_audit,
    open_storage,
    start_archive,
)
from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.config import Settings, load_settings, require_files, validate_listen
from pacsguard.archive.control import MARKER, answer_reload, answer_unlock, write_marker
from pacsguard.archive.dimse.handoff import WorkerHandoff, pass_connection
from pacsguard.archive.dimse.slots import AssociationSlots
from pacsguard.archive.hub import Hub, HubAuditSink, HubClient, HubLockout, HubSlots
from pacsguard.archive.recovery import recover
from pacsguard.archive.runtime import Endpoint
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.security.lockout import Lockout
from pacsguard.errors import AuditLogError, ConfigError

log = logging.getLogger(__name__)

HUB_SOCKET: Final = "hub.sock"
#: Seconds for every worker to say it is ready, and for each to stop.
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 30.0
#: More restarts than this within RESTART_WINDOW_S stop the archive (a worker that cannot run).
MAX_RESTARTS: Final = 5
RESTART_WINDOW_S: Final = 60.0
_STOP: Final = frozenset({signal.SIGTERM, signal.SIGINT})
_REQUESTS: Final = frozenset({signal.SIGUSR1, signal.SIGHUP})


@dataclass(frozen=True, slots=True)
class BoundSockets:
    """The supervisor's listening sockets, inherited by every worker."""

    dimse: list[socket.socket]
    web: socket.socket | None
    endpoints: list[Endpoint]

    def close(self) -> None:
        for sock in [*self.dimse, *([self.web] if self.web else [])]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept
            sock.close()


def bind_sockets(settings: Settings) -> BoundSockets:
    """Bind DIMSE (and DICOMweb) as the single archive would; ConfigError when a port is taken."""
    dimse: list[socket.socket] = []
    endpoints: list[Endpoint] = []
    try:
        for host, port, tls in dimse_addresses(settings):
            dimse.append(_listen(host, port, "[server]"))
            endpoints.append(Endpoint(host, int(dimse[-1].getsockname()[1]), tls))
        web = None
        if settings.dicomweb.enabled:
            web = _listen(settings.server.host, settings.dicomweb.port, "[dicomweb]")
            endpoints.append(Endpoint(settings.server.host, web.getsockname()[1], True, "https"))
    except BaseException:
        for sock in dimse:
            sock.close()
        raise
    return BoundSockets(dimse, web, endpoints)


def _listen(host: str, port: int, section: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, backlog=256)
    except OSError as exc:
        raise ConfigError(
            f"{section}: cannot listen on {host}:{port} ({exc.strerror}); choose another port "
            "or stop what uses it"
        ) from None
    return sock


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    #: Our end of the hand-off channel, and how many connections passed there are open.
    channel: socket.socket | None = None
    active: int = 0


@dataclass
class Supervisor:
    """Starts, watches and stops the workers; holds the hub and the audit log."""

    settings: Settings
    config_file: Path
    overrides: dict[str, object]
    check: bool
    say: Callable[[str], None]
    _workers: list[_Worker] = field(default_factory=list)
    _ready: set[int] = field(default_factory=set)
    _restarts: list[float] = field(default_factory=list)
    _stopping: bool = False
    #: A worker died: what it had not acknowledged may have left an unindexed blob, so the
    #: next start runs crash recovery (the marker stays). Not now: other workers are storing.
    _crashed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        """Run until SIGTERM or SIGINT (blocked by the caller, see cli._signals)."""
        settings = self.settings
        validate_listen(settings)
        require_files(settings)
        data_dir = settings.storage.data_dir
        marker = data_dir / MARKER
        index, blobs = open_storage(settings)
        try:
            if marker.exists():  # the last run did not stop cleanly
                recover(index, blobs, max_in_flight=settings.server.max_associations * 2)
        finally:
            index.close()
        audit, closers = open_audit(settings)
        lockout = Lockout(settings.security.lockout, time.monotonic)
        gate = Gate(settings, audit=audit, lockout=lockout)  # lifts lockouts, audited
        server = settings.server
        slots = AssociationSlots(
            server.max_associations, settings.per_ae_cap, settings.per_user_cap
        )
        hub: Hub | None = None
        sockets: BoundSockets | None = None
        try:
            sockets = bind_sockets(settings)
            # Said before the first worker's self-check prints what it saw of these endpoints.
            self.say(
                f"pacsguard archive {server.ae_title!r} ({settings.profile} profile) on "
                + ", ".join(str(e) for e in sockets.endpoints)
                + f" ({server.workers} workers)"
            )
            self.say(f"audit log: {settings.audit.log_path}")
            hub = Hub(data_dir / HUB_SOCKET, audit, lockout, slots, self._ready.add)
            write_marker(marker)
            self._workers = [_Worker(n) for n in range(server.workers)]
            for worker in self._workers:
                self._spawn(worker, sockets, hub.path)
            self._wait_ready()
            for number, listening in enumerate(sockets.dimse):
                threading.Thread(
                    target=self._accept, args=(number, listening), name="accept", daemon=True
                ).start()
            audit.emit(_lifecycle(EventType.APPLICATION_START, server.ae_title, sockets.endpoints))
            self.say("ready")
            self._watch(sockets, hub.path, gate, audit)
        finally:
            self._stopping = True
            if sockets is not None:
                for listening in sockets.dimse:  # no new connections while workers stop
                    with contextlib.suppress(OSError):
                        listening.shutdown(socket.SHUT_RDWR)
            self._stop_workers()
            with contextlib.suppress(Exception):
                audit.emit(_lifecycle(EventType.APPLICATION_STOP, server.ae_title, []))
            if hub is not None:
                hub.close()
            if sockets is not None:
                sockets.close()
            close_all(closers)
            if not self._crashed:
                marker.unlink(missing_ok=True)

    # -- workers ------------------------------------------------------------------------------
    def _spawn(self, worker: _Worker, sockets: BoundSockets, hub_path: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = {
            "worker": worker.number,
            "config": str(self.config_file),
            "overrides": self.overrides,
            "hub": str(hub_path),
            "handoff_fd": theirs.fileno(),
            "dimse_ports": [e.port for e in sockets.endpoints if e.protocol == "dicom"],
            "web_fd": None if sockets.web is None else sockets.web.fileno(),
            "check": self.check and worker.number == 0 and not self._restarts,
        }
        self._ready.discard(worker.number)
        with self._lock:
            if worker.channel is not None:
                worker.channel.close()
            worker.channel, worker.active = ours, 0
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "pacsguard.archive.workers", json.dumps(spec)],
                pass_fds=[theirs.fileno(), *([sockets.web.fileno()] if sockets.web else [])],
                start_new_session=True,  # signals reach workers through us, in order
            )
        finally:
            theirs.close()
        worker.started = time.monotonic()
        threading.Thread(
            target=self._count_ends, args=(worker, ours), name="handoff", daemon=True
        ).start()

    def _count_ends(self, worker: _Worker, channel: socket.socket) -> None:
        """Each byte from the worker: one connection passed to it has ended."""
        while True:
            try:
                data = channel.recv(64)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                if worker.channel is channel:
                    worker.active = max(0, worker.active - len(data))

    def _accept(self, index: int, listening: socket.socket) -> None:
        """Accept on DIMSE listener `index`; pass each connection to the least busy worker."""
        while not self._stopping:
            try:
                connection, _ = listening.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.05)  # EMFILE and the like: do not spin
                continue
            try:
                self._pass(index, connection)
            finally:
                connection.close()  # the worker holds its own descriptor now

    def _pass(self, index: int, connection: socket.socket) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self._stopping and time.monotonic() < deadline:
            with self._lock:
                ready = [
                    w for w in self._workers if w.number in self._ready and w.channel is not None
                ]
                chosen = min(ready, key=lambda w: w.active, default=None)
                channel = None if chosen is None else chosen.channel
                if chosen is not None:
                    chosen.active += 1
            if chosen is None or channel is None:
                time.sleep(0.01)  # every worker is (re)starting: the peer waits
                continue
            try:
                pass_connection(channel, index, connection)
                return
            except OSError:  # that worker just died: try another
                with self._lock:
                    chosen.active -= 1
                    self._ready.discard(chosen.number)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while len(self._ready) < len(self._workers):
            for worker in self._workers:
                assert worker.process is not None
                code = worker.process.poll()
                if code is not None:
                    raise ConfigError(
                        f"worker {worker.number} did not start (exit status {code}); "
                        "see its messages above"
                    )
            if time.monotonic() > deadline:
                raise ConfigError(f"the workers did not start within {START_TIMEOUT:.0f}s")
            time.sleep(0.05)

    def _watch(self, sockets: BoundSockets, hub_path: Path, gate: Gate, audit: AuditSink) -> None:
        """Wait for signals; restart a worker that died."""
        data_dir = self.settings.storage.data_dir
        while True:
            info = signal.sigtimedwait(_STOP | _REQUESTS, 0.5)
            if info is not None and info.si_signo in _STOP:
                return
            if info is not None:
                try:
                    self._request(info.si_signo, data_dir, gate, audit)
                except Exception:
                    log.exception("operator request failed")
            for worker in self._workers:
                assert worker.process is not None
                code = worker.process.poll()
                if code is None:
                    continue
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if t > now - RESTART_WINDOW_S]
                if len(self._restarts) >= MAX_RESTARTS:
                    raise ConfigError(
                        f"workers died {MAX_RESTARTS} times within {RESTART_WINDOW_S:.0f}s; "
                        "stopping the archive"
                    )
                self._restarts.append(now)
                self._crashed = True
                log.error("worker %d ended (exit status %s): restarting it", worker.number, code)
                self._spawn(worker, sockets, hub_path)

    def _signal_workers(self, signo: int) -> int:
        sent = 0
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signo)
                    sent += 1
        return sent

    def _request(self, signo: int, data_dir: Path, gate: Gate, audit: AuditSink) -> None:
        """SIGHUP: every worker reloads. SIGUSR1: `pacsguard reload` or `unlock` asks."""
        from pacsguard.archive.control import REQUEST

        def reload(requested_by: str) -> str:
            """Check the file here (a refusal is audited, as a single archive does), then
            pass SIGHUP on: each worker loads it again, applies it and audits that."""
            try:
                validate_listen(load_settings(self.config_file, overrides=self.overrides))
            except (ConfigError, OSError) as exc:
                with contextlib.suppress(AuditLogError):
                    audit.emit(_reload_refused(self.settings.server.ae_title, requested_by, exc))
                raise ConfigError(str(exc)) from None
            sent = self._signal_workers(signal.SIGHUP)
            return f"config reload ({requested_by}) passed on to {sent} workers"

        if signo == signal.SIGHUP:
            try:
                self.say(reload("SIGHUP"))
            except ConfigError as exc:
                self.say(f"config reload refused, keeping the running one: {exc}")
            return
        answered = answer_reload(data_dir, reload)
        if answered is not None:
            self.say(answered[1] if answered[0] else f"config reload refused: {answered[1]}")
        if (data_dir / REQUEST).exists():
            lifted = answer_unlock(data_dir, gate.lift_lockouts)
            self.say(
                ("lockout lifted for " + ", ".join(lifted)) if lifted else "no lockout to lift"
            )

    def _stop_workers(self) -> None:
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker %d did not stop within %.0fs: killed", worker.number, STOP_TIMEOUT
                )
                process.kill()
                process.wait()


def _reload_refused(ae_title: str, requested_by: str, error: Exception) -> AuditEvent:
    return AuditEvent(
        EventType.SECURITY_ALERT,
        EventAction.EXECUTE,
        EventOutcome.MINOR_FAILURE,
        (Participant(ae_title=ae_title, requestor=False),),
        detail={
            "result": "config-reload-refused",
            "requested_by": requested_by,
            "error": str(error)[:500],
        },
    )


def _lifecycle(kind: EventType, ae_title: str, endpoints: Sequence[Endpoint]) -> AuditEvent:
    detail: dict[str, str | int | bool] = {}
    if endpoints:
        detail["endpoints"] = ", ".join(str(e) for e in endpoints)
    return AuditEvent(
        kind,
        EventAction.EXECUTE,
        EventOutcome.SUCCESS,
        (Participant(ae_title=ae_title, requestor=False),),
        detail=detail,
    )


# -- in a worker process --------------------------------------------------------------------------
def worker_main(spec: dict[str, Any]) -> int:
    """One worker: the archive on the supervisor's sockets, until SIGTERM."""
    from pacsguard.cli._signals import (
        RELOAD_SIGNAL,
        STOP_SIGNALS,
        hold_stop_signals,
        wait_for_signal,
    )

    hold_stop_signals()
    from pacsguard.archive.reload import reload_archive

    number = int(spec["worker"])
    overrides: dict[str, object] = dict(spec["overrides"])
    config_file = Path(spec["config"])
    settings = load_settings(config_file, overrides=overrides)
    incoming = settings.storage.data_dir / "incoming" / f"worker-{number}"
    incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in incoming.iterdir():  # left by a crash: never acknowledged
        stale.unlink(missing_ok=True)
    tempfile.tempdir = str(incoming)
    pid = os.getpid()
    client = HubClient(Path(spec["hub"]), on_lost=lambda: os.kill(pid, signal.SIGTERM))
    web_fd = spec.get("web_fd")
    parts = WorkerParts(
        number,
        HubAuditSink(client),
        HubLockout(client),
        HubSlots(client),
        WorkerHandoff(socket.socket(fileno=int(spec["handoff_fd"]))),
        [int(port) for port in spec["dimse_ports"]],
        None if web_fd is None else socket.socket(fileno=int(web_fd)),
        closers=[client],
    )
    running = start_archive(settings, worker=parts)
    audit: AuditSink = running.audit
    try:
        if spec.get("check"):
            from rich.console import Console

            from pacsguard.cli.serve import _check_ourselves

            _check_ourselves(running, settings.profile, Console())
        gc.collect()
        gc.freeze()  # as `serve` does: the start-up heap stays out of the collector
        client.notify({"op": "ready", "worker": number})
        while (received := wait_for_signal()) not in STOP_SIGNALS:
            if received != RELOAD_SIGNAL:
                continue
            try:
                load = lambda: load_settings(config_file, overrides=overrides)  # noqa: E731
                print(reload_archive(running, load, audit, "SIGHUP").summary(), flush=True)
            except Exception as exc:
                log.error("worker %d: config reload refused: %s", number, exc)
    finally:
        running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(sys.argv[1])))
