"""What a fuzz harness is, and how one input is judged."""

from __future__ import annotations

import hashlib
import importlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CORPUS: Final = Path(__file__).parent / "corpus"

#: Harness name -> module under tests.fuzz.targets (imported lazily: see the package docstring).
TARGETS: Final = {
    "command": "tests.fuzz.targets.command",
    "pdata": "tests.fuzz.targets.pdata",
    "header": "tests.fuzz.targets.header",
    "file_meta": "tests.fuzz.targets.file_meta",
    "identifiers": "tests.fuzz.targets.identifiers",
    "associate": "tests.fuzz.targets.associate",
}
#: Harness name -> the modules whose coverage guides atheris: the parsers, not their oracles
#: (instrumented pydicom would slow every oracle call). For A-ASSOCIATE the parser is
#: pynetdicom's PDU classes.
INSTRUMENT: Final = {
    "command": ("pacsguard.dicom.command",),
    "pdata": (
        "pacsguard.dicom.ul",
        "pacsguard.dicom.dimse",
        "pacsguard.dicom.command",
        "pacsguard.archive.dimse.aio_receive",
    ),
    "header": ("pacsguard.dicom.header",),
    "file_meta": ("pacsguard.dicom.stream", "pacsguard.dicom.header"),
    "identifiers": (
        "pacsguard.archive.dimse.identifiers",
        "pacsguard.archive.index.matching",
        "pacsguard.dicom.dimse",
    ),
    "associate": (
        "pacsguard.archive.dimse.aio_negotiation",
        "pacsguard.dicom.acse",
        "pacsguard.dicom.acse_accept",
        "pacsguard.dicom.ul",
        "pynetdicom.pdu",
        "pynetdicom.pdu_items",
    ),
}


class Defect(AssertionError):
    """A parser disagreed with its oracle, or broke a property it promises."""


@dataclass(frozen=True)
class Harness:
    """One parser under test.

    `check` judges one input; `seeds` are the inputs the committed corpus starts from;
    `max_len` bounds the inputs atheris makes."""

    name: str
    check: Callable[[bytes], None]
    seeds: Callable[[], Iterable[bytes]]
    max_len: int = 4096


def load(name: str) -> Harness:
    harness = importlib.import_module(TARGETS[name]).HARNESS
    assert isinstance(harness, Harness)
    return harness


def judge(harness: Harness, data: bytes) -> None:
    """Run one input. pydicom warns about odd values; warnings are noise here, not verdicts
    (and the test suite turns warnings into errors, which would change the parsers' path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        harness.check(data)


def corpus_files(name: str) -> list[Path]:
    folder = CORPUS / name
    return sorted(folder.iterdir()) if folder.is_dir() else []


def corpus_name(data: bytes) -> str:
    """File name of an input in a corpus: libFuzzer's convention (SHA-1 of the content)."""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()
