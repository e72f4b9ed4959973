"""`pacsguard serve` stops in order on SIGTERM however early it comes.

The archive blocks its stop signals and collects them with `sigwait` (`cli._signals`). A thread
that does not block them takes a process-directed SIGTERM with its default action, and the
archive dies with -15 instead of stopping: numpy, imported through pydicom, starts OpenBLAS's
native threads at import, so the signals must be blocked before the archive's modules load.
"""

from __future__ import annotations

import signal
from pathlib import Path

from .conftest import free_port, make_data_dir, start_serve

#: What `cli._signals.hold_stop_signals` blocks, as the SigBlk bit mask of /proc/PID/status.
HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1})


def _unheld(pid: int) -> dict[str, set[str]]:
    """Threads of `pid` other than the main one (which waits in sigwait, whose waited signals
    the kernel unblocks meanwhile) that let a held signal through, and those signals."""
    found: dict[str, set[str]] = {}
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        if task.name == str(pid):
            continue
        status = (task / "status").read_text()
        (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk")]
        blocked = int(mask, 16)
        missing = {s.name for s in HELD if not blocked & (1 << (s.value - 1))}
        if missing:
            found[f"{task.name} {(task / 'comm').read_text().strip()}"] = missing
    return found


def test_every_thread_holds_the_stop_signals_and_an_early_sigterm_stops_in_order(
    tmp_path: Path,
) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    log = tmp_path / "serve.log"
    for _ in range(3):  # SIGTERM as soon as the port accepts, before "ready"
        proc = start_serve(data_dir, free_port(), log)
        try:
            assert _unheld(proc.pid) == {}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
