"""Synthetic DICOM for the archive benchmark: ingest sets, the C-FIND index, one big study."""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pacsguard.dicom import uids
from pacsguard.lab.synth import build_dataset, generate_archive

SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
EXPLICIT_LE = "1.2.840.10008.1.2.1"


# --- DICOM Part 10, hand-encoded (explicit VR little endian): 100,000 files in seconds --------

_LONG_VRS = frozenset({"OB", "OW", "OF", "SQ", "UT", "UN"})


def _element(tag: int, vr: str, value: str | int | bytes) -> bytes:
    if vr == "US":
        raw = struct.pack("<H", int(value))
    elif isinstance(value, bytes):
        raw = value
    else:
        raw = str(value).encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB") else b" "
    group, number = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, number, vr.encode(), 0, len(raw)) + raw
    return struct.pack("<HH2sH", group, number, vr.encode(), len(raw)) + raw


def part10(
    sop_class: str, sop_instance: str, elements: dict[int, tuple[str, str | int]], pixels: int
) -> bytes:
    """A Part 10 file up to and including the Pixel Data element header (`pixels` bytes of OW
    must follow); `elements` maps tags below (7FE0,0010) to (VR, value)."""
    meta = b"".join(
        [
            _element(0x00020001, "OB", b"\x00\x01"),
            _element(0x00020002, "UI", sop_class),
            _element(0x00020003, "UI", sop_instance),
            _element(0x00020010, "UI", EXPLICIT_LE),
            _element(0x00020012, "UI", str(uids.IMPLEMENTATION_CLASS_UID)),
        ]
    )
    body = {0x00080016: ("UI", sop_class), 0x00080018: ("UI", sop_instance), **elements}
    data = b"".join(_element(tag, vr, value) for tag, (vr, value) in sorted(body.items()))
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels)
    return (
        b"\0" * 128
        + b"DICM"
        + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta))
        + meta
        + data
        + pixel_header
    )


def _image_elements(rows: int, columns: int) -> dict[int, tuple[str, str | int]]:
    return {
        0x00280002: ("US", 1),
        0x00280004: ("CS", "MONOCHROME2"),
        0x00280010: ("US", rows),
        0x00280011: ("US", columns),
        0x00280100: ("US", 16),
        0x00280101: ("US", 16),
        0x00280102: ("US", 15),
        0x00280103: ("US", 0),
    }


# --- data sets ----------------------------------------------------------------------------------


def write_ingest_set(directory: Path, count: int, size: int, seed: int) -> int:
    """`count` CT/MR instances of `size`x`size` 16-bit from the lab's synthetic archive (one
    series per study, up to 50 instances each); returns the total bytes written."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = generate_archive(
        seed, max(1, count // 25), studies_per_patient=(1, 1), series_per_study=(1, 1),
        instances_per_series=(50, 50),
    )  # fmt: skip
    pattern = bytes(range(256)) * (size * size * 2 // 256 + 1)
    total = 0
    for index, (patient, study, one_series, instance) in enumerate(archive.walk()):
        if index == count:
            break
        ds = build_dataset(patient, study, one_series, instance)
        ds.Rows, ds.Columns = size, size
        ds.PixelData = pattern[: size * size * 2]
        path = directory / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    if index < count - 1:
        raise RuntimeError("the synthetic archive is smaller than asked")
    return total


@dataclass(frozen=True, slots=True)
class FindStudy:
    study_uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    size: int
    sha256: str


_SYLLABLES = (
    "zor", "vak", "quil", "bex", "tram", "wub", "nix", "pol", "yrn", "gath",
    "mox", "sil", "dre", "fen", "kul", "ozz", "pim", "rux", "thal", "vey",
)  # fmt: skip
_GIVEN = ("Ada", "Bo", "Cyd", "Dax", "Eun", "Fox", "Gil", "Hal", "Ivo", "Jun", "Kai", "Lux")
FIRST_DAY = date(2015, 1, 1)
DAYS = 3653  # ten years


def write_find_index(root: Path, count: int, seed: int, ingested_share: float) -> dict[str, Any]:
    """`count` studies of one small Secondary Capture image each, spread over ten years of
    StudyDate, ~2.5 studies per patient. Files of the first `ingested_share` of patients go to
    `root/ingest` (pacsguard receives them by storescu), the rest to `root/bulk-{0,1,2}`."""
    rng = random.Random(seed)
    patient_count = max(1, count * 2 // 5)
    people = []
    for p in range(patient_count):
        family = "Synthetic" + "".join(rng.choice(_SYLLABLES) for _ in range(3))
        born = FIRST_DAY - timedelta(days=rng.randrange(365 * 10, 365 * 90))
        people.append((f"PGB{p:07d}", f"{family}^{rng.choice(_GIVEN)}", born, rng.choice("MF")))
    owners = sorted(rng.randrange(patient_count) for _ in range(count))
    cutoff = int(patient_count * ingested_share)
    dirs = [root / "ingest", *(root / f"bulk-{i}" for i in range(3))]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    pixels = bytes(range(128))
    found: list[FindStudy] = []
    ingested: list[FindStudy] = []
    for index, owner in enumerate(owners):
        patient_id, name, born, sex = people[owner]
        study_uid = f"2.25.{(seed % 1000 + 1) * 10**9 + index}"
        study = FindStudy(
            study_uid=study_uid,
            patient_id=patient_id,
            patient_name=name,
            birth_date=born.strftime("%Y%m%d"),
            sex=sex,
            study_date=(FIRST_DAY + timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d"),
            study_time=f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
            accession=f"ACC{index:09d}",
            size=0,
            sha256="",
        )
        elements: dict[int, tuple[str, str | int]] = {
            0x00080020: ("DA", study.study_date),
            0x00080030: ("TM", study.study_time),
            0x00080050: ("SH", study.accession),
            0x00080060: ("CS", "OT"),
            0x00080064: ("CS", "WSD"),
            0x00080090: ("PN", ""),
            0x00100010: ("PN", study.patient_name),
            0x00100020: ("LO", study.patient_id),
            0x00100030: ("DA", study.birth_date),
            0x00100040: ("CS", study.sex),
            0x0020000D: ("UI", study_uid),
            0x0020000E: ("UI", study_uid + ".1"),
            0x00200010: ("SH", "1"),
            0x00200011: ("IS", "1"),
            0x00200013: ("IS", "1"),
            **_image_elements(8, 8),
        }
        data = part10(SC_IMAGE, study_uid + ".1.1", elements, len(pixels)) + pixels
        is_ingested = owner < cutoff
        target = dirs[0] if is_ingested else dirs[1 + index % 3]
        (target / f"{index:07d}.dcm").write_bytes(data)
        study = replace(study, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        (ingested if is_ingested else found).append(study)
    return {"ingested": ingested, "bulk": found, "dirs": dirs}


def write_big_study(directory: Path, count: int, instance_bytes: int, seed: int) -> int:
    """One study of `count` Secondary Capture images of `instance_bytes` pixel data each."""
    directory.mkdir(parents=True, exist_ok=True)
    columns = 8192
    rows = instance_bytes // (columns * 2)
    pixels = rows * columns * 2
    chunk = random.Random(seed).randbytes(16 << 20)
    study_uid = f"2.25.{(seed % 1000 + 1) * 10**9 + 999_999_999}"
    total = 0
    for i in range(count):
        header = part10(
            SC_IMAGE,
            f"{study_uid}.1.{i + 1}",
            {
                0x00080020: ("DA", "20240102"),
                0x00080050: ("SH", "BIGSTUDY1"),
                0x00080060: ("CS", "OT"),
                0x00100010: ("PN", "Syntheticbig^Ada"),
                0x00100020: ("LO", "PGBIG0001"),
                0x0020000D: ("UI", study_uid),
                0x0020000E: ("UI", study_uid + ".1"),
                0x00200013: ("IS", str(i + 1)),
                **_image_elements(rows, columns),
            },
            pixels,
        )
        with (directory / f"{i:03d}.dcm").open("wb") as f:
            f.write(header)
            left = pixels
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
        total += len(header) + pixels
    return total
