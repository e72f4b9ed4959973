"""Waiting for SIGTERM / SIGINT without a signal handler.

A handler that sets a threading.Event can deadlock: it runs in the main thread between
bytecodes, possibly while that thread holds the Event's own lock inside `Event.wait()`. Instead
the signals are blocked before any thread starts (threads inherit the mask) and the main thread
collects them with `sigwait`, so a signal that arrives during start-up is not lost either.
"""

from __future__ import annotations

import signal
from typing import Final

STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})
#: Operator requests to a running archive (`pacsguard unlock`, `pacsguard reload`; see
#: archive.control) and SIGHUP, the conventional "re-read your configuration".
REQUEST_SIGNALS: Final = frozenset({signal.SIGUSR1, signal.SIGHUP})
RELOAD_SIGNAL: Final = signal.SIGHUP


def hold_stop_signals() -> None:
    """Block SIGTERM, SIGINT, SIGUSR1 and SIGHUP in this thread and every later thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | REQUEST_SIGNALS)


def wait_for_stop_signal() -> int:
    """Return the first SIGTERM or SIGINT (already pending or yet to come)."""
    return signal.sigwait(STOP_SIGNALS)


def wait_for_signal() -> int:
    """Return the next stop or request signal (already pending or yet to come)."""
    return signal.sigwait(STOP_SIGNALS | REQUEST_SIGNALS)
