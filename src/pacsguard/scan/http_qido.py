"""Counting QIDO-RS answers (PS3.18 10.6) without keeping them: pure tally, no I/O.

Each page of a `GET {root}/studies?limit=&offset=` answer is a DICOM JSON array (PS3.18 F.2).
The tally keeps a truncated SHA-256 of each Study Instance UID (so overlapping pages are not
counted twice) and the PHI *categories* the entries carry; the entries themselves are dropped
as soon as a page is read. Paging ends when a page is short, repeats itself, or the page budget
is spent; anything short of a complete answer is a lower bound.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from pacsguard.dicom.phi import PHI_RETURN_KEYS, PhiCategory, categorize

STUDY_INSTANCE_UID: Final = "0020000D"


@cache
def _phi_tags() -> dict[str, str]:
    """Tags (DICOM JSON spelling) of the identifying keys; pydicom loads on first use only."""
    from pydicom.datadict import tag_for_keyword

    tags = {}
    for keyword in PHI_RETURN_KEYS:
        tag = tag_for_keyword(keyword)
        if tag is not None:
            tags[f"{tag:08X}"] = keyword
    return tags


def categorize_json(entry: Mapping[str, Any]) -> set[PhiCategory]:
    """PHI categories in one DICOM JSON entry, by the same rules as a C-FIND response."""
    from pydicom import Dataset

    subset = {tag: entry[tag] for tag in _phi_tags() if isinstance(entry.get(tag), dict)}
    if not subset:
        return set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = Dataset.from_json(subset)
    except Exception:  # a remote's malformed JSON: no category rather than a crash
        return set()
    return categorize(dataset)


def _uid_hash(entry: Mapping[str, Any]) -> bytes | None:
    element = entry.get(STUDY_INSTANCE_UID)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values or not isinstance(values[0], str):
        return None
    return hashlib.sha256(values[0].encode("ascii", "replace")).digest()[:12]


@dataclass
class QidoTally:
    """Distinct studies over pages, by UID hash; entries without a UID count one each."""

    page_size: int
    max_pages: int
    pages: int = 0
    lower_bound: bool = False
    done: bool = False
    note: str | None = None
    phi: set[PhiCategory] = field(default_factory=set)
    _seen: set[bytes] = field(default_factory=set)
    _without_uid: int = 0

    @property
    def studies(self) -> int:
        return len(self._seen) + self._without_uid

    def add_page(self, page: Any) -> None:
        """Count one decoded page; sets `done` (and `lower_bound`) when paging must stop."""
        self.pages += 1
        if not isinstance(page, list):
            self.stop("answer is not a DICOM JSON array", lower_bound=True)
            return
        new = 0
        for entry in page:
            if not isinstance(entry, dict):
                continue
            digest = _uid_hash(entry)
            if digest is None:
                self._without_uid += 1
                new += 1
            elif digest not in self._seen:
                self._seen.add(digest)
                new += 1
            self.phi |= categorize_json(entry)
        if len(page) < self.page_size:
            self.stop(None, lower_bound=False)  # a short page is the last one
        elif new == 0:
            # The server repeats itself (ignores offset): more may exist beyond what it shows.
            full = len(page) == self.page_size
            self.stop("server ignores the offset parameter", lower_bound=full)
        elif len(page) > self.page_size:
            self.stop("server ignores the limit parameter", lower_bound=False)
        elif self.pages >= self.max_pages:
            self.stop(f"page budget of {self.max_pages} spent", lower_bound=True)

    def stop(self, note: str | None, *, lower_bound: bool) -> None:
        self.done = True
        self.lower_bound |= lower_bound
        if note and self.note is None:
            self.note = note

    @property
    def next_offset(self) -> int:
        return self.pages * self.page_size
