"""Operator requests to a running `pacsguard serve`, through its data folder and a signal.

The archive writes its process ID into ``archive.running`` (the marker that also tells crash
recovery whether the last stop was clean). `pacsguard unlock` writes ``unlock.request`` (JSON: a
list of source addresses, or null for every source), sends SIGUSR1, and waits for
``unlock.answer`` (JSON: the sources whose lockout was lifted). Both files are 0600 in the
private data folder, so only the archive's own user can ask; the archive audits each lift.
`pacsguard reload` works the same way with ``reload.request`` (JSON: who asks) and
``reload.answer`` (JSON: ``{"ok": bool, "message": str}``); see archive.reload.
Why no socket or HTTP endpoint: a file plus a signal needs no listener that could itself be
attacked.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from pacsguard.errors import UsageError

CONTROL_SIGNAL: Final = signal.SIGUSR1
MARKER: Final = "archive.running"
REQUEST: Final = "unlock.request"
ANSWER: Final = "unlock.answer"
RELOAD_REQUEST: Final = "reload.request"
RELOAD_ANSWER: Final = "reload.answer"


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temp, path)


def write_marker(marker: Path) -> None:
    """Mark the archive running, with our process ID (for `pacsguard unlock`)."""
    _write_private(marker, f"{os.getpid()}\n")


def running_pid(data_dir: Path) -> int:
    """The process ID of the `pacsguard serve` that runs on `data_dir`; UsageError if none."""
    marker = data_dir / MARKER
    try:
        pid = int(marker.read_text(encoding="ascii").strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        raise UsageError(f"no pacsguard archive is running on {data_dir}") from None
    if not any(part.endswith(b"pacsguard") for part in cmdline) or b"serve" not in cmdline:
        raise UsageError(f"no pacsguard archive is running on {data_dir} (stale {marker})")
    return pid


def _ask(
    data_dir: Path, request: str, answer_name: str, payload: object, timeout: float
) -> tuple[int, object]:
    """The one request/answer exchange with the running archive: a 0600 request file, the
    control signal, then poll for the answer file. Returns (the archive's pid, its answer)."""
    pid = running_pid(data_dir)
    answer = data_dir / answer_name
    answer.unlink(missing_ok=True)
    _write_private(data_dir / request, json.dumps(payload))
    os.kill(pid, CONTROL_SIGNAL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            said: object = json.loads(answer.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
            continue
        answer.unlink(missing_ok=True)
        return pid, said
    raise UsageError(f"the archive (pid {pid}) did not answer within {timeout:.0f}s")


def ask_unlock(
    data_dir: Path, addresses: Sequence[str] | None, *, timeout: float = 10.0
) -> list[str]:
    """Ask the archive on `data_dir` to lift lockouts; returns the sources it lifted."""
    wanted = None if addresses is None else list(addresses)
    pid, lifted = _ask(data_dir, REQUEST, ANSWER, wanted, timeout)
    if not isinstance(lifted, list):
        raise UsageError(f"the archive (pid {pid}) gave a malformed answer")
    return [str(source) for source in lifted]


def answer_unlock(data_dir: Path, lift: Callable[[Sequence[str] | None], list[str]]) -> list[str]:
    """In the archive: carry out a pending unlock request and answer it. A signal without a
    request (or with a malformed one) lifts nothing."""
    request = data_dir / REQUEST
    try:
        wanted = json.loads(request.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return []
    finally:
        request.unlink(missing_ok=True)
    if wanted is not None and not (
        isinstance(wanted, list) and all(isinstance(a, str) for a in wanted)
    ):
        return []
    lifted = lift(wanted)
    _write_private(data_dir / ANSWER, json.dumps(lifted))
    return lifted


def ask_reload(data_dir: Path, *, timeout: float = 30.0) -> tuple[bool, str]:
    """Ask the archive on `data_dir` to re-read its config: (applied, what it said)."""
    who = {"uid": os.getuid(), "pid": os.getpid()}
    pid, said = _ask(data_dir, RELOAD_REQUEST, RELOAD_ANSWER, who, timeout)
    if not isinstance(said, dict):
        raise UsageError(f"the archive (pid {pid}) gave a malformed answer")
    return bool(said.get("ok")), str(said.get("message", ""))


def answer_reload(data_dir: Path, reload: Callable[[str], str]) -> tuple[bool, str] | None:
    """In the archive: carry out a pending reload request and answer it; None when there is
    none. `reload(requested_by)` returns a summary or raises (config refused, audit down)."""
    request = data_dir / RELOAD_REQUEST
    try:
        who = json.loads(request.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    finally:
        request.unlink(missing_ok=True)
    uid = who.get("uid") if isinstance(who, dict) else None
    requested_by = f"pacsguard reload (uid {uid})" if isinstance(uid, int) else "pacsguard reload"
    try:
        outcome = (True, reload(requested_by))
    except Exception as exc:  # the asker must hear why, not wait for a timeout
        outcome = (False, str(exc) or type(exc).__name__)
    _write_private(data_dir / RELOAD_ANSWER, json.dumps({"ok": outcome[0], "message": outcome[1]}))
    return outcome
