"""The archive's journal: tracebacks keep their frames and lose exception messages."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import warnings
from collections.abc import Iterator

import pytest
from pydicom import config as pydicom_config

from pacsguard.archive.journal import (
    SQLALCHEMY_ENGINE_LOGGER,
    RedactedFormatter,
    configure_journal,
    keep_values_out_of_logs,
)

SECRET = "DOE^JANE 123-45-6789 19800101"


def _fail_deep() -> None:
    raise ValueError(f"invalid literal: {SECRET!r}")


def test_a_traceback_keeps_its_frames_and_drops_messages_of_the_whole_chain() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactedFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("pacsguard.test.journal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            try:
                _fail_deep()
            except ValueError as exc:
                raise RuntimeError(f"while storing {SECRET}") from exc
        except RuntimeError:
            logger.exception("store failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "ERROR store failed" in text
    assert "_fail_deep" in text and "test_journal.py" in text  # where it happened
    assert "builtins.ValueError (message withheld" in text
    assert "builtins.RuntimeError (message withheld" in text
    assert "DOE" not in text and "123-45-6789" not in text and "19800101" not in text


@pytest.fixture
def journal() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, threading.excepthook)
    stream = io.StringIO()
    configure_journal("debug", stream)
    try:
        yield stream
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        threading.excepthook = saved[2]


def test_exceptions_escaping_a_thread_go_to_the_journal_redacted(journal: io.StringIO) -> None:
    thread = threading.Thread(target=_fail_deep, name="worker-1")
    thread.start()
    thread.join()
    text = journal.getvalue()
    assert "uncaught exception in thread worker-1" in text
    assert "_fail_deep" in text and SECRET not in text


def test_warnings_are_logged_through_the_journal(journal: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library noticed something", UserWarning, stacklevel=1)
    assert "py.warnings" in journal.getvalue()


def test_asyncio_task_reprs_are_withheld(journal: io.StringIO) -> None:
    """asyncio's handler puts the task's repr, which quotes the exception, in the message."""

    async def failing() -> None:
        _fail_deep()

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(failing())
        loop.run_until_complete(asyncio.sleep(0))
        error = task.exception()
        assert SECRET in repr(task)
        loop.default_exception_handler(
            {"message": "Task exception was never retrieved", "exception": error, "future": task}
        )
    finally:
        loop.close()
    text = journal.getvalue()
    assert "Task exception was never retrieved (details withheld)" in text
    assert "_fail_deep" in text and SECRET not in text


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_journal("loud")


def test_sqlalchemy_result_rows_are_dropped_and_statements_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keep_values_out_of_logs()
    keep_values_out_of_logs()  # idempotent: one filter
    engine = logging.getLogger(SQLALCHEMY_ENGINE_LOGGER)
    assert len(engine.filters) == 1
    with caplog.at_level(logging.DEBUG, logger="sqlalchemy"):
        engine.debug("Row %r", (SECRET,))
        engine.info("SELECT patients.patient_name FROM patients")
    assert [r.levelno for r in caplog.records if r.name == engine.name] == [logging.INFO]


def test_pydicom_value_validation_is_turned_off() -> None:
    saved = pydicom_config.settings.reading_validation_mode
    try:
        pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
        keep_values_out_of_logs()
        assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE
    finally:
        pydicom_config.settings.reading_validation_mode = saved
