"""Synthetic data for the DICOMweb benchmark, all in memory as Part 10 bytes.

- the QIDO index: 10,000 studies of one small image each (the archive benchmark's generator,
  `write_find_index`: ten years of StudyDate, ~2.5 studies per patient, unique accession
  numbers), with the query keys each shape draws from;
- WADO series: whole series of 512x512 16-bit Secondary Capture images;
- STOW instances: fresh 512x512 16-bit images, new UIDs for every request.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from benchmarks.archive.data import (
    SC_IMAGE,
    FindStudy,
    _image_elements,
    part10,
    write_find_index,
)

SIZE = 512


@dataclass(frozen=True, slots=True)
class IndexData:
    studies: list[FindStudy]
    files: list[bytes]


def index_data(work: Path, count: int, seed: int) -> IndexData:
    written = write_find_index(work / "index", count, seed, ingested_share=0.0)
    studies: list[FindStudy] = written["bulk"]
    files = [p.read_bytes() for d in written["dirs"] for p in sorted(d.glob("*.dcm"))]
    if len(files) != count or len(studies) != count:
        raise RuntimeError(f"index data: {len(files)} files, {len(studies)} studies, not {count}")
    return IndexData(studies, files)


@dataclass(frozen=True, slots=True)
class QueryShape:
    name: str
    #: (query parameters, expected number of matching studies) per request
    queries: list[tuple[dict[str, str], int]]


def query_shapes(studies: Sequence[FindStudy], per_shape: int, seed: int) -> list[QueryShape]:
    """Study-level QIDO-RS queries of five shapes, each with its expected result count."""
    rng = random.Random(seed)
    picks = [rng.choice(studies) for _ in range(per_shape)]
    by_patient: dict[str, int] = {}
    for s in studies:
        by_patient[s.patient_id] = by_patient.get(s.patient_id, 0) + 1

    def name_prefix(s: FindStudy) -> str:
        return s.patient_name.split("^")[0][: len("Synthetic") + 6]

    def date_window(s: FindStudy) -> tuple[str, str]:
        first = date(int(s.study_date[:4]), int(s.study_date[4:6]), int(s.study_date[6:]))
        return s.study_date, (first + timedelta(days=6)).strftime("%Y%m%d")

    prefixes = [name_prefix(s) for s in picks]
    windows = [date_window(s) for s in picks]
    return [
        QueryShape(
            "PatientID", [({"PatientID": s.patient_id}, by_patient[s.patient_id]) for s in picks]
        ),
        QueryShape(
            "PatientName prefix*",
            [
                ({"PatientName": p + "*"}, sum(x.patient_name.startswith(p) for x in studies))
                for p in prefixes
            ],
        ),
        QueryShape(
            "StudyDate 7-day range",
            [
                ({"StudyDate": f"{a}-{b}"}, sum(a <= x.study_date <= b for x in studies))
                for a, b in windows
            ],
        ),
        QueryShape("AccessionNumber", [({"AccessionNumber": s.accession}, 1) for s in picks]),
        QueryShape(
            "all studies, limit=100",
            [
                ({"limit": "100", "offset": str(rng.randrange(0, len(studies) - 100))}, 100)
                for _ in picks
            ],
        ),
    ]


@dataclass(frozen=True, slots=True)
class Series:
    study_uid: str
    series_uid: str
    files: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.files))


def _image(study: str, series: str, sop: str, number: int, pixels: bytes, tag: str) -> bytes:
    header = part10(
        SC_IMAGE,
        sop,
        {
            0x00080020: ("DA", "20250102"),
            0x00080050: ("SH", f"WB{tag}"[:16]),
            0x00080060: ("CS", "OT"),
            0x00100010: ("PN", f"Syntheticweb^{tag}"),
            0x00100020: ("LO", f"PGWEB{tag}"[:64]),
            0x0020000D: ("UI", study),
            0x0020000E: ("UI", series),
            0x00200013: ("IS", str(number)),
            **_image_elements(SIZE, SIZE),
        },
        len(pixels),
    )
    return header + pixels


def wado_series(count: int, per_series: int, seed: int) -> list[Series]:
    rng = random.Random(seed)
    pixels = rng.randbytes(SIZE * SIZE * 2)
    out = []
    for n in range(count):
        study = f"2.25.{seed % 1000 + 1}77{n:04d}"
        series = study + ".1"
        files = [
            _image(study, series, f"{series}.{i + 1}", i + 1, pixels, f"W{n}")
            for i in range(per_series)
        ]
        out.append(Series(study, series, files))
    return out


class StowSource:
    """Fresh 512x512 instances, each with UIDs never used before in this run."""

    def __init__(self, seed: int) -> None:
        self._pixels = random.Random(seed + 1).randbytes(SIZE * SIZE * 2)
        self._seed = seed % 1000 + 1
        self._next = 0

    def take(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            self._next += 1
            study = f"2.25.{self._seed}88{self._next:07d}"
            out.append(
                _image(study, study + ".1", study + ".1.1", 1, self._pixels, f"S{self._next}")
            )
        return out
