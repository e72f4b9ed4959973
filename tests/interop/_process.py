"""Loopback guard, ports, environment, executables and the peer processes themselves."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

from ._errors import PeerStartError, ToolMissingError

LOOPBACK = "127.0.0.1"
_T = TypeVar("_T")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_SYSTEM_BIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


def require_loopback(host: str) -> str:
    """Return `host` if it is an IPv4 literal in 127.0.0.0/8; raise ValueError otherwise."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP literal; the harness never resolves names"
        ) from None
    if address.version != 4 or not address.is_loopback:
        raise ValueError(f"{host} is outside 127.0.0.0/8; the harness talks to loopback only")
    return host


def free_port(host: str = LOOPBACK) -> int:
    """An ephemeral TCP port that was free on `host` a moment ago (callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((require_loopback(host), 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float = 15.0, *, process: ManagedProcess | None = None
) -> None:
    """Block until `host:port` accepts a TCP connection; fail early if `process` exits."""
    require_loopback(host)
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.running:
            raise PeerStartError(
                f"{process.name} exited with {process.returncode} before listening on "
                f"{host}:{port}\n{process.log_tail()}"
            )
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                detail = f"\n{process.log_tail()}" if process is not None else ""
                raise PeerStartError(
                    f"nothing listens on {host}:{port} after {timeout}s{detail}"
                ) from exc
            time.sleep(0.05)


def peer_env() -> dict[str, str]:
    """The environment for every peer and tool: ours, TCP_NODELAY=1, no proxy settings."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env["TCP_NODELAY"] = "1"
    return env


def find_executable(name: str) -> Path | None:
    """`name` on PATH or in the system bin directories, skipping this virtualenv's bin/."""
    in_venv = sys.prefix != sys.base_prefix
    venv = Path(sys.prefix).resolve()
    candidates = [*os.environ.get("PATH", "").split(os.pathsep), *_SYSTEM_BIN_DIRS]
    for directory in candidates:
        if not directory:
            continue
        resolved = Path(directory).resolve()
        if in_venv and (resolved == venv or venv in resolved.parents):
            continue
        found = shutil.which(name, path=str(resolved))
        if found is not None:
            return Path(found)
    return None


def executable(name: str) -> Path:
    """Like `find_executable`, but raises ToolMissingError naming the Debian package."""
    found = find_executable(name)
    if found is None:
        raise ToolMissingError(
            f"{name} not found; install Debian's dcmtk, orthanc, nmap or stunnel4"
        )
    return found


# --- processes ----------------------------------------------------------------------------------


class ManagedProcess:
    """A long-running peer: own session (teardown reaches its children), stdout/stderr in files."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.stdout_path = workdir / f"{name}.stdout.log"
        self.stderr_path = workdir / f"{name}.stderr.log"
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=workdir,
                env=peer_env(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, lines: int = 20) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL it after `timeout`; return the exit status."""
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
        return self.popen.wait(timeout)

    def _signal_group(self, signum: signal.Signals) -> None:
        # The leader is not yet reaped, so its pid (== its process group id) cannot be reused.
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


def start_listening(
    name: str, argv: Sequence[str], ports: Sequence[int], workdir: Path, timeout: float
) -> ManagedProcess:
    process = ManagedProcess(name, argv, workdir)
    try:
        for port in ports:
            wait_for_port(LOOPBACK, port, timeout, process=process)
    except BaseException:
        process.stop()
        raise
    return process


def first_successful_start(start: Callable[[], _T], attempts: int = 3) -> _T:
    """Retry `start` (which picks fresh ports each time) when another process took a port."""
    errors: list[PeerStartError] = []
    for _ in range(attempts):
        try:
            return start()
        except PeerStartError as exc:
            errors.append(exc)
    raise PeerStartError(f"gave up after {attempts} attempts: {errors[-1]}") from errors[-1]


def run_tool(argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a short-lived tool with `peer_env()`, capturing text output; never raises on exit."""
    return subprocess.run(
        list(argv),
        env=peer_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )
