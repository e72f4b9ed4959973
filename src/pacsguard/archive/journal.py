"""The archive's journal: Python logging to stderr (systemd's journal under a service manager),
without patient data.

What keeps patient values out of it:

- Our own log calls name operations, counts and exception *classes*, never attribute values;
  peer-supplied text is bounded (`security.peer_text`); query values are not logged at all;
  the index's engine hides SQL parameters (`hide_parameters`).
- Exception *messages* are where third-party code puts values: PostgreSQL's ``DETAIL: Key
  (patient_id)=(...) already exists``, ``invalid literal for int(): '...'``, pydicom's
  ``Invalid value for VR DA: '...'``. `RedactedFormatter` writes every traceback with its
  frames (file, line, function: what a bug report needs) but each exception as its class only.
  It is the one output edge, so it covers uvicorn's, asyncio's and every library's logger too.
- pydicom's value validation quotes the offending value in a warning and a log line, and
  SQLAlchemy logs result rows at DEBUG: `keep_values_out_of_logs` (called by `start_archive`)
  turns the first off and filters the second out, whatever the logging configuration.

Python warnings are routed through the same handler (`logging.captureWarnings`), and so are
exceptions that escape a thread.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Final, TextIO

from pydicom import config as pydicom_config

FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS: Final = ("debug", "info", "warning", "error")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def redacted_traceback(exc_info: _ExcInfo) -> str:
    """A traceback with every frame, each exception (and its causes) by class only."""
    lines: list[str] = []
    error: BaseException | None = exc_info[1]
    seen: set[int] = set()
    chain: list[BaseException] = []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    for number, item in enumerate(reversed(chain)):
        if number:
            lines.append("\nThe above exception led to the following:\n\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        kind = type(item)
        lines.append(f"{kind.__module__}.{kind.__qualname__} (message withheld from the log)\n")
    return "".join(lines).rstrip("\n")


class RedactedFormatter(logging.Formatter):
    """`logging.Formatter` whose tracebacks keep their frames and drop exception messages.

    asyncio's exception handler (uvloop's alike) also writes the failed task's repr into the
    message (``future: <Task ... exception=ValueError('...')>``), which quotes the exception
    message: of such a record only the first line ("Task exception was never retrieved") is
    kept."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "asyncio" and record.exc_info:
            first = record.getMessage().split("\n", 1)[0]
            record = logging.makeLogRecord(
                {**record.__dict__, "msg": f"{first} (details withheld)", "args": None}
            )
        return super().format(record)

    def formatException(self, ei: _ExcInfo | tuple[None, None, None]) -> str:
        if ei[1] is None:
            return ""
        return redacted_traceback((ei[0], ei[1], ei[2]))


class _NoRows(logging.Filter):
    """Drops SQLAlchemy's DEBUG records of its engine logger: result rows, with their values."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


#: SQLAlchemy's engine logs statements (INFO: bound parameters, hidden by `hide_parameters`)
#: and, at DEBUG, every result row with its values, whatever the logging configuration asks.
SQLALCHEMY_ENGINE_LOGGER: Final = "sqlalchemy.engine.Engine"


def keep_values_out_of_logs() -> None:
    """Process-wide, for the archive (`start_archive` calls it; idempotent):

    - pydicom's value validation off: its warnings quote the value ("Invalid value for VR DA:
      '...'"), which for a peer's malformed birth date or a stored instance's odd name would
      put patient data in the journal. The archive checks what it depends on (UIDs, lengths,
      sizes) itself; no answer depended on these warnings.
    - SQLAlchemy's result rows never logged, even when its loggers are set to DEBUG.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    engine = logging.getLogger(SQLALCHEMY_ENGINE_LOGGER)
    if not any(isinstance(f, _NoRows) for f in engine.filters):
        engine.addFilter(_NoRows())


def configure_journal(level: str = "warning", stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr) at `level` through `RedactedFormatter`, with warnings and
    exceptions escaping threads routed there too."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactedFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    log = logging.getLogger("pacsguard")

    def thread_failed(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        log.error(
            "uncaught exception in thread %s",
            args.thread.name if args.thread is not None else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    threading.excepthook = thread_failed
