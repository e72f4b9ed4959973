"""pacsguard's archive against Orthanc and dcmtk's storescp, side by side in one run.

Every peer runs on this machine on loopback, started fresh by this module; read the ratios,
not the absolute numbers (other work on the machine moves both sides alike).

1. Ingest: dcmtk `storescu +sd` (one association per run) sends a set of instances to each
   target, each run into an empty store, median of `repeats` runs. Targets: pacsguard over
   loopback plaintext (address-bound AE) and over TLS (user identity), both with the secure
   defaults (fsync'd blobs, SQLite index with synchronous=FULL, hash-chained audit log with
   fsync, encryption at rest); Orthanc from Debian (SQLite index, "SyncStorageArea": true, no
   plugins, any AE may store); storescp writing files (no fsync), and storescp with an fsync
   per file when a C compiler is available (an LD_PRELOAD shim fsyncs each file it writes at
   fclose: dcmtk 3.6.7's storescp has no fsync option). Each target is checked to hold every
   instance afterwards (pacsguard `fsck`, Orthanc `/statistics`, storescp's file count).
2. C-FIND: one index of N studies (one small instance each) in pacsguard and in Orthanc, then
   the same study-level queries to both over one persistent association each (the project's
   asyncio client, so that no process start-up or client polling is measured), alternating
   targets query by query; latency is from sending C-FIND-RQ to the final response. Every
   answer is checked against the generated ground truth.
3. Peak RSS of `pacsguard serve` (and of Orthanc) while receiving one large study by storescu.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, func, insert, select
from tests.interop.peers import (
    LOOPBACK,
    executable,
    free_port,
    open_profile,
    orthanc_config,
    peer_env,
    wait_for_port,
)

from benchmarks._syncs import count_syncs
from pacsguard.archive.config import load_settings
from pacsguard.archive.index.matching import normalize_name
from pacsguard.archive.index.schema import instances, patients, series, studies
from pacsguard.archive.security.bootstrap import hash_secret
from pacsguard.dicom import uids
from pacsguard.dicom.client import Association, Timeouts, request_association
from pacsguard.dicom.ul import AssociationAccepted, ContextResult, propose
from pacsguard.lab.synth import build_dataset, generate_archive

OUR_AET = "PACSGUARD"
PLAIN_AET = "BENCH"  # address-bound peer: store + find over the loopback plaintext listener
TLS_AET = "BENCHTLS"  # user-password peer: store over TLS
ORTHANC_AET = "ORTHANC"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
EXPLICIT_LE = "1.2.840.10008.1.2.1"
METHOD_NOTES = (
    "pacsguard runs with the defaults `pacsguard init` writes: AES-GCM encryption at rest, each "
    "blob fsync'd and its directory fsync'd, SQLite index in WAL mode with synchronous=FULL, "
    "hash-chained audit log fsync'd before each answer (group commit: one fsync may cover "
    "several events); `serve --no-self-check`.",
    "Each ingest run starts after os.sync(), so that no target pays for the unsynced writes "
    "of the one before it (storescp writes without fsync).",
    "Orthanc: Debian's 1.10 with the interop harness's open profile (SQLite index, "
    '"SyncStorageArea": true, "Plugins": [], any AE may store and find).',
    "storescp + fsync per file: dcmtk 3.6.7's storescp has no fsync option, so an LD_PRELOAD "
    "shim fsyncs every file storescp opened for writing when it closes it (file only, not its "
    "directory).",
    "Targets: 'storescp' means storescp with its defaults (no fsync); the fsync row is given "
    "for comparison. Peak RSS is compared with 200 MB = 200,000,000 bytes.",
)
_FSCK_COUNT = re.compile(r"fsck: (\d+) instances")
_FSYNC_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
/* fsync every regular file opened for writing before fclose closes it */
int fclose(FILE *f) {
    static int (*real)(FILE *);
    if (!real) real = (int (*)(FILE *))dlsym(RTLD_NEXT, "fclose");
    int fd = f ? fileno(f) : -1;
    struct stat st;
    if (fd >= 0 && (fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY && fstat(fd, &st) == 0
        && S_ISREG(st.st_mode)) {
        fflush(f);
        fsync(fd);
    }
    return real(f);
}
"""

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


# --- processes ----------------------------------------------------------------------------------


class Processes:
    """Every long-running process this benchmark starts, each in its own session, so that
    `stop_all` (also run on failure) reaches their children."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], log: Path, *, cwd: Path | None = None, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if proc in self._running:
            self._running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self._running):
            self.stop(proc, timeout=10.0)


def _wait_ready(proc: subprocess.Popen[bytes], ports: Sequence[int], log: Path) -> None:
    for port in ports:
        try:
            wait_for_port(LOOPBACK, port, 60.0)
        except Exception as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{log.stem} did not listen on {port}: {tail}") from exc
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited: {log.read_text(errors='replace')[-2000:]}")


def storescu(
    port: int, called: str, calling: str, directories: Sequence[Path], extra: Sequence[str] = ()
) -> list[str]:
    return [
        str(executable("storescu")), "-aet", calling, "-aec", called, *extra,
        "+sd", LOOPBACK, str(port), *map(str, directories),
    ]  # fmt: skip


def _warm(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as f:
            while f.read(16 << 20):
                pass


def run_timed(argv: Sequence[str], timeout: float = 1800.0) -> float:
    """Run a client to completion; its wall time in seconds. Raises if it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        list(argv), env=peer_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return elapsed


def run_parallel(argvs: Sequence[Sequence[str]], timeout: float = 3600.0) -> float:
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            list(a), env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for a in argvs
    ]  # fmt: skip
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"storescu failed ({proc.returncode}): {err[-2000:]!r}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return time.perf_counter() - started


# --- targets ------------------------------------------------------------------------------------


@dataclass
class Pacsguard:
    """`pacsguard serve` on a copy of a data folder made by `pacsguard init` (secure defaults)
    with two peers registered: BENCH (address 127.0.0.1: echo, store, find) and BENCHTLS
    (user identity, from 127.0.0.1: echo, store)."""

    template: Path
    password: str
    processes: Processes
    data_dir: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    plain_port: int = 0
    tls_port: int = 0

    @classmethod
    def prepare(cls, work: Path, processes: Processes) -> Pacsguard:
        template = work / "pacsguard-template"
        subprocess.run(
            [_pacsguard(), "init", "--data-dir", str(template)],
            env=peer_env(), capture_output=True, check=True,
        )  # fmt: skip
        password = hashlib.sha256(os.urandom(16)).hexdigest()[:24]
        config = template / "pacsguard.toml"
        text = config.read_text(encoding="utf-8")
        text = text.replace("allow_address_auth = false", "allow_address_auth = true")
        text += f"""
[users.bench]
password_hash = "{hash_secret(password)}"
roles = ["modality"]

[[ae]]
ae_title = "{PLAIN_AET}"
auth = "address"
address = "127.0.0.1"
permissions = ["echo", "store", "find"]

[[ae]]
ae_title = "{TLS_AET}"
auth = "user-password"
username = "bench"
address = "127.0.0.1"
permissions = ["echo", "store"]
"""
        config.write_text(text, encoding="utf-8")
        return cls(template, password, processes)

    def start(self, data_dir: Path, *, fresh: bool = True) -> None:
        if fresh:
            shutil.copytree(self.template, data_dir)
        self.data_dir = data_dir
        self.plain_port, self.tls_port = free_port(), free_port()
        log = data_dir.parent / f"{data_dir.name}.serve.log"
        argv = [
            _pacsguard(), "serve", "--data-dir", str(data_dir), "--port", str(self.tls_port),
            "--plaintext-port", str(self.plain_port), "--no-self-check",
        ]  # fmt: skip
        self.proc = self.processes.start(argv, log, env=peer_env())
        _wait_ready(self.proc, (self.tls_port, self.plain_port), log)

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc)
            self.proc = None

    def store_plain(self, directories: Sequence[Path]) -> list[str]:
        return storescu(self.plain_port, OUR_AET, PLAIN_AET, directories)

    def store_tls(self, directories: Sequence[Path]) -> list[str]:
        ca = self.data_dir / "tls" / "ca.crt"
        extra = ["+tla", "+cf", str(ca), "--user", "bench", "--password", self.password]
        return storescu(self.tls_port, OUR_AET, TLS_AET, directories, extra)

    def fsck(self) -> int:
        """Instances in the index after `pacsguard fsck` (exit 0: index and blobs agree)."""
        done = subprocess.run(
            [_pacsguard(), "fsck", "--data-dir", str(self.data_dir)],
            env=peer_env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        found = _FSCK_COUNT.search(done.stdout)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"pacsguard fsck failed ({done.returncode}): {done.stdout[-2000:]}")
        return int(found.group(1))


def _pacsguard() -> str:
    return str(Path(sys.executable).with_name("pacsguard"))


@dataclass
class Orthanc:
    """Debian's Orthanc with the interop harness's OPEN profile (any AE may store and find):
    SQLite index and files in `storage`, "SyncStorageArea": true, no plugins."""

    processes: Processes
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    http_port: int = 0

    def start(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_port(), free_port()
        config = orthanc_config(
            open_profile(),
            dicom_port=self.port,
            http_port=self.http_port,
            storage_dir=workdir / "storage",
            http_user=None,
            modality_port=free_port(),
        )
        config["DicomAet"] = ORTHANC_AET
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        log = workdir / "orthanc.log"
        argv = [str(executable("Orthanc")), "--no-jobs", str(path)]
        self.proc = self.processes.start(argv, log, cwd=workdir, env=peer_env())
        _wait_ready(self.proc, (self.port, self.http_port), log)
        self.rest("/system")

    def rest(self, path: str) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=60) as response:
            return json.load(response)

    def counts(self) -> dict[str, int]:
        stats = self.rest("/statistics")
        return {"studies": int(stats["CountStudies"]), "instances": int(stats["CountInstances"])}

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc)
            self.proc = None

    def store(self, directories: Sequence[Path]) -> list[str]:
        return storescu(self.port, ORTHANC_AET, PLAIN_AET, directories)


@dataclass
class Storescp:
    """dcmtk storescp writing every received instance to `output` (optionally with a shim
    that fsyncs each file before closing it)."""

    processes: Processes
    preload: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self, output: Path) -> None:
        output.mkdir(parents=True)
        self.port = free_port()
        env = peer_env()
        if self.preload is not None:
            env["LD_PRELOAD"] = str(self.preload)
        log = output.parent / f"{output.name}.storescp.log"
        argv = [str(executable("storescp")), "-aet", "STORESCP", "-od", str(output), str(self.port)]
        self.proc = self.processes.start(argv, log, env=env)
        _wait_ready(self.proc, (self.port,), log)

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc)
            self.proc = None


def build_fsync_shim(work: Path) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source, library = work / "fsync_on_close.c", work / "fsync_on_close.so"
    source.write_text(_FSYNC_SHIM)
    done = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        capture_output=True, check=False,
    )  # fmt: skip
    return library if done.returncode == 0 else None


# --- 1. ingest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestTarget:
    name: str
    run: Callable[[Path, Path], tuple[float, int]]  # (input dir, scratch dir) -> (s, held)


def ingest_targets(
    pacsguard: Pacsguard, orthanc: Orthanc, plain: Storescp, synced: Storescp | None
) -> list[IngestTarget]:
    def via_pacsguard(tls: bool) -> Callable[[Path, Path], tuple[float, int]]:
        def run(source: Path, scratch: Path) -> tuple[float, int]:
            pacsguard.start(scratch / "pacsguard")
            try:
                store = pacsguard.store_tls if tls else pacsguard.store_plain
                seconds = run_timed(store([source]))
            finally:
                pacsguard.stop()
            return seconds, pacsguard.fsck()

        return run

    def via_orthanc(source: Path, scratch: Path) -> tuple[float, int]:
        orthanc.start(scratch / "orthanc")
        try:
            seconds = run_timed(orthanc.store([source]))
            held = orthanc.counts()["instances"]
        finally:
            orthanc.stop()
        return seconds, held

    def via_storescp(scp: Storescp) -> Callable[[Path, Path], tuple[float, int]]:
        def run(source: Path, scratch: Path) -> tuple[float, int]:
            output = scratch / "storescp"
            scp.start(output)
            try:
                seconds = run_timed(storescu(scp.port, "STORESCP", PLAIN_AET, [source]))
            finally:
                scp.stop()
            return seconds, sum(1 for p in output.iterdir() if p.is_file())

        return run

    targets = [
        IngestTarget("pacsguard (plaintext, address AE)", via_pacsguard(tls=False)),
        IngestTarget("pacsguard (TLS, user identity)", via_pacsguard(tls=True)),
        IngestTarget("Orthanc 1.10 (SyncStorageArea)", via_orthanc),
        IngestTarget("storescp (no fsync)", via_storescp(plain)),
    ]
    if synced is not None:
        targets.append(IngestTarget("storescp + fsync per file", via_storescp(synced)))
    return targets


def measure_ingest(
    targets: Sequence[IngestTarget], source: Path, count: int, scratch: Path, repeats: int
) -> list[dict[str, Any]]:
    """Median wall time of `repeats` storescu runs per target, target order rotated per run."""
    _warm(source)  # in the page cache for every target alike
    runs: dict[str, list[float]] = {t.name: [] for t in targets}
    held: dict[str, list[int]] = {t.name: [] for t in targets}
    for repeat in range(repeats):
        shift = repeat % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            run_dir = scratch / f"run-{repeat}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            # storescp writes without fsync: unless the dirty pages it (or a removed run
            # folder) left are written back first, the next target's fsyncs pay for them.
            os.sync()
            seconds, stored = target.run(source, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            runs[target.name].append(seconds)
            held[target.name].append(stored)
            print(f"  {target.name}: {seconds:.2f}s, holds {stored}/{count}", flush=True)
    rows: list[dict[str, Any]] = []
    for target in targets:
        median = statistics.median(runs[target.name])
        rows.append(
            {
                "target": target.name,
                "runs_s": [round(s, 3) for s in runs[target.name]],
                "median_s": round(median, 3),
                "instances_per_s": round(count / median, 1),
                "held_after_each_run": held[target.name],
                "verified": all(h == count for h in held[target.name]),
            }
        )
    by_name: dict[str, float] = {r["target"]: r["instances_per_s"] for r in rows}
    for row in rows:
        for key, name in (
            ("vs_orthanc", "Orthanc 1.10 (SyncStorageArea)"),
            ("vs_storescp", "storescp (no fsync)"),
            ("vs_storescp_fsync", "storescp + fsync per file"),
        ):
            if name in by_name:
                row[key] = round(by_name[row["target"]] / by_name[name], 3)
    return rows


# --- 2. C-FIND ----------------------------------------------------------------------------------


def bulk_insert(index_url: str, found: Sequence[FindStudy]) -> int:
    """Add `found` to a pacsguard index in one transaction, row for row what `SqlIndex.add`
    writes for such an instance (entity attributes from the instance, person names also
    case-folded); the blobs are not written (C-FIND reads the index only). Returns the number
    of studies the index then holds."""
    engine = create_engine(index_url)
    try:
        with engine.begin() as conn:
            first = {
                t.name: int(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one())
                for t in (patients, studies, series, instances)
            }
            patient_ids: dict[str, int] = {}
            patient_rows, study_rows, series_rows, instance_rows = [], [], [], []
            for n, s in enumerate(found, start=1):
                if s.patient_id not in patient_ids:
                    patient_ids[s.patient_id] = first["patients"] + len(patient_ids) + 1
                    patient_rows.append(
                        {
                            "id": patient_ids[s.patient_id],
                            "patient_id": s.patient_id,
                            "patient_name": s.patient_name,
                            "patient_name_key": normalize_name(s.patient_name),
                            "patient_birth_date": s.birth_date,
                            "patient_sex": s.sex,
                        }
                    )
                study_rows.append(
                    {
                        "id": first["studies"] + n,
                        "study_instance_uid": s.study_uid,
                        "patient_fk": patient_ids[s.patient_id],
                        "study_date": s.study_date,
                        "study_time": s.study_time,
                        "study_id": "1",
                        "study_description": "",
                        "accession_number": s.accession,
                        "referring_physician_name": "",
                        "referring_physician_name_key": "",
                    }
                )
                series_rows.append(
                    {
                        "id": first["series"] + n,
                        "series_instance_uid": s.study_uid + ".1",
                        "study_fk": first["studies"] + n,
                        "modality": "OT",
                        "series_number": "1",
                        "series_description": "",
                    }
                )
                instance_rows.append(
                    {
                        "id": first["instances"] + n,
                        "sop_instance_uid": s.study_uid + ".1.1",
                        "series_fk": first["series"] + n,
                        "sop_class_uid": SC_IMAGE,
                        "instance_number": "1",
                        "transfer_syntax_uid": EXPLICIT_LE,
                        "blob_key": s.study_uid + ".1.1",
                        "size": s.size,
                        "sha256": s.sha256,
                    }
                )
            for table, rows in (
                (patients, patient_rows),
                (studies, study_rows),
                (series, series_rows),
                (instances, instance_rows),
            ):
                conn.execute(insert(table), rows)
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(studies)).scalar_one())
    finally:
        engine.dispose()


@dataclass(frozen=True, slots=True)
class Query:
    kind: str
    keys: dict[str, str]
    expected: frozenset[str]


def make_queries(all_studies: Sequence[FindStudy], count: int, seed: int) -> list[Query]:
    """`count` queries, a fifth of each kind, shuffled; each with its expected StudyInstanceUIDs."""
    rng = random.Random(seed)
    by_patient: dict[str, set[str]] = {}
    by_date: dict[str, set[str]] = {}
    for s in all_studies:
        by_patient.setdefault(s.patient_id, set()).add(s.study_uid)
        by_date.setdefault(s.study_date, set()).add(s.study_uid)
    queries: list[Query] = []
    per_kind = max(1, count // 5)
    for _ in range(per_kind):
        s = rng.choice(all_studies)
        queries.append(
            Query("PatientID", {"PatientID": s.patient_id}, frozenset(by_patient[s.patient_id]))
        )
        day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
        text = day.strftime("%Y%m%d")
        queries.append(
            Query("StudyDate day", {"StudyDate": text}, frozenset(by_date.get(text, ())))
        )
        start = FIRST_DAY + timedelta(days=rng.randrange(DAYS - 6))
        week = [(start + timedelta(days=d)).strftime("%Y%m%d") for d in range(7)]
        expected = frozenset(u for d in week for u in by_date.get(d, ()))
        queries.append(Query("StudyDate 7 days", {"StudyDate": f"{week[0]}-{week[-1]}"}, expected))
        s = rng.choice(all_studies)
        prefix = s.patient_name[: len("Synthetic") + 6]
        matches = frozenset(x.study_uid for x in all_studies if x.patient_name.startswith(prefix))
        queries.append(Query("PatientName prefix*", {"PatientName": prefix + "*"}, matches))
        s = rng.choice(all_studies)
        queries.append(
            Query("AccessionNumber", {"AccessionNumber": s.accession}, frozenset({s.study_uid}))
        )
    rng.shuffle(queries)
    return queries


RETURN_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate")


def _identifier(query: Query) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, query.keys.get(keyword, ""))
    for keyword, value in query.keys.items():
        setattr(ds, keyword, value)
    ds.NumberOfStudyRelatedInstances = ""
    return ds


async def _find(assoc: Association, context: ContextResult, query: Query) -> tuple[float, bool]:
    """(seconds, the answers are the expected studies, each with 1 instance, final status 0)."""
    started = time.perf_counter()
    uids: set[str] = set()
    counts_ok = True
    final = None
    async for status, answer in assoc.find(context, _identifier(query)):
        if answer is None:
            final = status
            continue
        uids.add(str(answer.StudyInstanceUID))
        counts_ok &= str(answer.get("NumberOfStudyRelatedInstances", "")).strip() == "1"
    elapsed = time.perf_counter() - started
    return elapsed, counts_ok and final == 0 and uids == query.expected


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _measure_find(
    endpoints: dict[str, tuple[int, str]], queries: Sequence[Query]
) -> dict[str, tuple[list[float], dict[str, list[float]], int]]:
    opened: dict[str, tuple[Association, ContextResult]] = {}
    try:
        for name, (port, called) in endpoints.items():
            answer, assoc = await request_association(
                LOOPBACK, port, calling_ae=PLAIN_AET, called_ae=called,
                contexts=propose([uids.STUDY_ROOT_FIND]), timeouts=Timeouts(10.0, 600.0),
            )  # fmt: skip
            if assoc is None or not isinstance(answer, AssociationAccepted):
                raise RuntimeError(f"{name} refused the C-FIND association: {answer}")
            context = answer.accepted_context(uids.STUDY_ROOT_FIND)
            if context is None:
                await assoc.abort()
                raise RuntimeError(f"{name} refused Study Root C-FIND: {answer}")
            opened[name] = (assoc, context)
        names = list(endpoints)
        for query in queries[:10]:  # warm-up, not measured
            for name in names:
                await _find(*opened[name], query)
        measured: dict[str, tuple[list[float], dict[str, list[float]], int]] = {
            name: ([], {}, 0) for name in names
        }
        for i, query in enumerate(queries):
            for name in names if i % 2 == 0 else names[::-1]:
                seconds, right = await _find(*opened[name], query)
                latencies, by_kind, correct = measured[name]
                latencies.append(seconds)
                by_kind.setdefault(query.kind, []).append(seconds)
                measured[name] = (latencies, by_kind, correct + int(right))
        return measured
    finally:
        for assoc, _ in opened.values():
            await assoc.release()


def measure_find(endpoints: dict[str, tuple[int, str]], queries: Sequence[Query]) -> dict[str, Any]:
    """Every query to every target over one association each (the project's asyncio client:
    TCP_NODELAY, no polling), alternating which target goes first."""
    measured = asyncio.run(_measure_find(endpoints, queries))
    result: dict[str, Any] = {}
    for name, (latencies, by_kind, correct) in measured.items():
        ms = [s * 1000 for s in latencies]
        result[name] = {
            "p50_ms": round(_percentile(ms, 0.5), 2),
            "p99_ms": round(_percentile(ms, 0.99), 2),
            "mean_ms": round(statistics.fmean(ms), 2),
            "p50_ms_by_kind": {
                k: round(_percentile([s * 1000 for s in v], 0.5), 2)
                for k, v in sorted(by_kind.items())
            },
            "answers_matching_ground_truth": correct,
        }
    return result


# --- 3. peak RSS --------------------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for {pid}")


@contextmanager
def rss_sampler(pid: int, interval: float = 0.05) -> Iterator[dict[str, int]]:
    """Sample VmRSS of `pid` while the block runs; the dict gets max_kib and samples."""
    found = {"max_kib": 0, "samples": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with suppress(OSError, RuntimeError):
                found["max_kib"] = max(found["max_kib"], _status_kib(pid, "VmRSS"))
                found["samples"] += 1
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()


def measure_rss(name: str, pid: int, argv: Sequence[str], total: int) -> dict[str, Any]:
    """Send the study; RSS of `pid` before, its largest sampled RSS during, VmHWM after."""
    before = _status_kib(pid, "VmRSS")
    with rss_sampler(pid) as sampled:
        seconds = run_timed(argv)
    hwm = _status_kib(pid, "VmHWM")
    return {
        "target": name,
        "seconds": round(seconds, 2),
        "mib_per_s": round(total / seconds / 2**20, 1),
        "rss_before_mib": round(before / 1024, 1),
        "rss_max_sampled_mib": round(sampled["max_kib"] / 1024, 1),
        "vm_hwm_mib": round(hwm / 1024, 1),
        "rss_samples": sampled["samples"],
    }


# --- the run ------------------------------------------------------------------------------------


def run(
    work: Path,
    *,
    repeats: int = 3,
    find_studies: int = 100_000,
    find_queries: int = 200,
    big_study_mib: int = 2048,
    big_instances: int = 8,
    seed: int = 2026,
) -> dict[str, Any]:
    processes = Processes()
    load_before = os.getloadavg()
    notes: list[str] = list(METHOD_NOTES)
    # SIGTERM must unwind through `finally` too, or the peers outlive the benchmark.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        pacsguard = Pacsguard.prepare(work, processes)
        orthanc = Orthanc(processes)
        shim = build_fsync_shim(work)
        if shim is None:
            notes.append("no C compiler: the 'storescp + fsync per file' row is missing")
        targets = ingest_targets(
            pacsguard,
            orthanc,
            Storescp(processes),
            Storescp(processes, preload=shim) if shim is not None else None,
        )
        ingest = []
        for label, count, size in (("small", 1000, 64), ("512x512", 300, 512)):
            source = work / f"ingest-{label}"
            total = write_ingest_set(source, count, size, seed)
            print(
                f"ingest: {count} instances of {size}x{size} ({total / 2**20:.0f} MiB)", flush=True
            )
            rows = measure_ingest(targets, source, count, work / "scratch", repeats)
            ingest.append(
                {"set": label, "instances": count, "matrix": size, "bytes": total, "rows": rows}
            )
            shutil.rmtree(source)
        syncs = run_syncs(
            work, pacsguard, orthanc, Storescp(processes, preload=shim) if shim else None, 200, seed
        )
        if not syncs["rows"]:
            notes.append("strace is not installed: no counts of sync calls")
        find = run_find(work, pacsguard, orthanc, find_studies, find_queries, seed, notes)
        rss = run_rss(work, pacsguard, orthanc, big_study_mib, big_instances, seed, notes)
    finally:
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous)
    result: dict[str, Any] = {
        "benchmark": "archive-vs-peers",
        "ingest": ingest,
        "syncs": syncs,
        "find": find,
        "rss": rss,
        "notes": notes,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": _versions(),
    }
    result["targets"] = evaluate(result)
    return result


def run_find(
    work: Path,
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    count: int,
    query_count: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any]:
    root = work / "find"
    started = time.perf_counter()
    data = write_find_index(root, count, seed, ingested_share=0.02)
    sample = dcmread(next(iter(sorted(data["dirs"][0].iterdir()))))
    assert sample.StudyDate and sample.PatientName, "generated file does not parse"
    all_studies: list[FindStudy] = [*data["ingested"], *data["bulk"]]
    print(f"find: {count} studies written in {time.perf_counter() - started:.0f}s", flush=True)
    orthanc.start(root / "orthanc")
    load_orthanc = run_parallel([orthanc.store([d]) for d in data["dirs"]])
    held = orthanc.counts()
    if held["studies"] != count:
        raise RuntimeError(f"Orthanc holds {held} studies, expected {count}")
    print(f"find: Orthanc loaded in {load_orthanc:.0f}s", flush=True)
    pacsguard.start(root / "pacsguard")
    load_pacsguard = run_timed(pacsguard.store_plain([data["dirs"][0]]))
    pacsguard.stop()
    index_url = load_settings(pacsguard.data_dir / "pacsguard.toml").storage.index_url
    bulk_started = time.perf_counter()
    indexed = bulk_insert(index_url, data["bulk"])
    bulk_seconds = time.perf_counter() - bulk_started
    if indexed != count:
        raise RuntimeError(f"pacsguard's index holds {indexed} studies, expected {count}")
    pacsguard.start(pacsguard.data_dir, fresh=False)
    print(f"find: pacsguard loaded ({len(data['ingested'])} by storescu)", flush=True)
    for d in data["dirs"]:
        shutil.rmtree(d)
    queries = make_queries(all_studies, query_count, seed)
    try:
        measured = measure_find(
            {"pacsguard": (pacsguard.plain_port, OUR_AET), "Orthanc": (orthanc.port, ORTHANC_AET)},
            queries,
        )
    finally:
        pacsguard.stop()
        orthanc.stop()
    notes.append(
        f"C-FIND index: {len(data['ingested'])} studies reached pacsguard through storescu "
        f"({len(data['ingested']) / load_pacsguard:.0f}/s); the other {len(data['bulk'])} were "
        f"written into its SQLite index in one transaction ({bulk_seconds:.0f}s), row for row as "
        "SqlIndex.add writes them, without blobs (C-FIND reads only the index): at that rate "
        f"storescu would have needed ~{count / (len(data['ingested']) / load_pacsguard) / 60:.0f} "
        f"min. Orthanc received all {count} by 4 storescu in parallel ({load_orthanc:.0f}s). "
        'Orthanc keeps its default "StorageAccessOnFind": "Always"; every requested key is '
        "in its database, and pacsguard's find_result_cap (1000) is above every answer's size."
    )
    sizes = [len(q.expected) for q in queries]
    ratio = measured["pacsguard"]["p50_ms"] / measured["Orthanc"]["p50_ms"]
    return {
        "studies": count,
        "patients": len({s.patient_id for s in all_studies}),
        "queries": len(queries),
        "queries_per_kind": {
            k: sum(q.kind == k for q in queries) for k in sorted({q.kind for q in queries})
        },
        "matches_per_query": {
            "min": min(sizes),
            "median": statistics.median(sizes),
            "max": max(sizes),
        },
        "client": "pacsguard.dicom.client, one association per target, targets alternating",
        "targets": measured,
        "p50_ratio_pacsguard_over_orthanc": round(ratio, 3),
        "p99_ratio_pacsguard_over_orthanc": round(
            measured["pacsguard"]["p99_ms"] / measured["Orthanc"]["p99_ms"], 3
        ),
    }


def run_syncs(
    work: Path,
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    synced: Storescp | None,
    count: int,
    seed: int,
) -> dict[str, Any]:
    """fsync-family calls per acknowledged instance, counted by strace, for each server."""
    source = work / "syncs-source"
    write_ingest_set(source, count, 64, seed + 3)
    rows: list[dict[str, Any]] = []

    def measure(name: str, pid: int, argv: list[str], held: Callable[[], int]) -> None:
        counts = count_syncs(pid, lambda: run_timed(argv), work / f"syncs-{len(rows)}.txt")
        if counts is None:
            return
        stored = held()
        total = sum(counts.values())
        rows.append(
            {
                "target": name,
                "calls": counts,
                "instances": stored,
                "per_instance": round(total / max(stored, 1), 2),
            }
        )

    pacsguard.start(work / "syncs-pacsguard")
    try:
        assert pacsguard.proc is not None
        argv = pacsguard.store_plain([source])
        measure("pacsguard (plaintext, address AE)", pacsguard.proc.pid, argv, lambda: count)
    finally:
        pacsguard.stop()
    orthanc.start(work / "syncs-orthanc")
    try:
        assert orthanc.proc is not None
        measure(
            "Orthanc 1.10 (SyncStorageArea)",
            orthanc.proc.pid,
            orthanc.store([source]),
            lambda: orthanc.counts()["instances"],
        )
    finally:
        orthanc.stop()
    if synced is not None:
        output = work / "syncs-storescp"
        synced.start(output)
        try:
            assert synced.proc is not None
            argv = storescu(synced.port, "STORESCP", PLAIN_AET, [source])
            measure(
                "storescp + fsync per file",
                synced.proc.pid,
                argv,
                lambda: sum(1 for p in output.iterdir() if p.is_file()),
            )
        finally:
            synced.stop()
    shutil.rmtree(source)
    return {"instances": count, "rows": rows}


def run_rss(
    work: Path,
    pacsguard: Pacsguard,
    orthanc: Orthanc,
    big_study_mib: int,
    big_instances: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any]:
    free = shutil.disk_usage(work).free
    wanted = big_study_mib << 20
    if free < 20 * 10**9:
        wanted = max(256 << 20, min(wanted, (free - (2 << 30)) // 4))
        notes.append(
            f"only {free / 10**9:.1f} GB free: the large study shrank to {wanted >> 20} MiB"
        )
    source = work / "big-study"
    total = write_big_study(source, big_instances, wanted // big_instances, seed)
    print(f"rss: {big_instances} instances, {total / 2**20:.0f} MiB", flush=True)
    _warm(source)
    pacsguard.start(work / "rss-pacsguard")
    try:
        assert pacsguard.proc is not None
        ours = measure_rss(
            "pacsguard serve", pacsguard.proc.pid, pacsguard.store_plain([source]), total
        )
    finally:
        pacsguard.stop()
    ours["held"] = pacsguard.fsck()
    shutil.rmtree(work / "rss-pacsguard")
    orthanc.start(work / "rss-orthanc")
    try:
        assert orthanc.proc is not None
        theirs = measure_rss("Orthanc 1.10", orthanc.proc.pid, orthanc.store([source]), total)
        theirs["held"] = orthanc.counts()["instances"]
    finally:
        orthanc.stop()
    rows = [ours, theirs]
    for row in rows:
        row["expected"] = big_instances
    shutil.rmtree(work / "rss-orthanc")
    shutil.rmtree(source)
    return {"instances": big_instances, "bytes": total, "rows": rows}


def _versions() -> dict[str, str]:
    dcmtk = subprocess.run(
        [str(executable("storescu")), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    orthanc = subprocess.run(
        [str(executable("Orthanc")), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "python": sys.version.split()[0],
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "dcmtk": dcmtk[0].strip("$ ") if dcmtk else "?",
        "orthanc": orthanc[0] if orthanc else "?",
    }


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's targets, met or not, from the measured numbers."""
    verdicts = []
    for one in result["ingest"]:
        rows = {r["target"]: r for r in one["rows"]}
        ours = rows["pacsguard (plaintext, address AE)"]
        verdicts.append(
            {
                "target": f"ingest {one['set']}: pacsguard >= 1.0x Orthanc",
                "measured": ours.get("vs_orthanc"),
                "met": ours.get("vs_orthanc", 0) >= 1.0,
            }
        )
        verdicts.append(
            {
                "target": f"ingest {one['set']}: pacsguard >= 0.5x storescp",
                "measured": ours.get("vs_storescp"),
                "met": ours.get("vs_storescp", 0) >= 0.5,
            }
        )
        if "vs_storescp_fsync" in ours:
            verdicts.append(
                {
                    "target": f"ingest {one['set']}: pacsguard >= 0.5x storescp + fsync",
                    "measured": ours["vs_storescp_fsync"],
                    "met": ours["vs_storescp_fsync"] >= 0.5,
                }
            )
    ratio = result["find"]["p50_ratio_pacsguard_over_orthanc"]
    verdicts.append({"target": "C-FIND p50 <= Orthanc", "measured": ratio, "met": ratio <= 1.0})
    hwm = result["rss"]["rows"][0]["vm_hwm_mib"]
    verdicts.append(
        {
            "target": "pacsguard peak RSS (VmHWM) < 200 MB",
            "measured": f"{hwm} MiB",
            "met": hwm * 2**20 < 200e6,
        }
    )
    return verdicts


def _syncs_markdown(syncs: dict[str, Any] | None) -> list[str]:
    if not syncs or not syncs["rows"]:
        return []
    lines = [
        f"## Waits for the disk ({syncs['instances']} small instances, strace -f -c on the "
        "server; not timed)",
        "",
        "| server | fsync-family calls | per acknowledged instance |",
        "|---|---|---:|",
    ]
    for r in syncs["rows"]:
        calls = ", ".join(f"{name} {n}" for name, n in sorted(r["calls"].items()))
        lines.append(f"| {r['target']} | {calls or 'none'} | {r['per_instance']} |")
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    machine, versions = result["machine"], result["versions"]
    lines = [
        "# Archive benchmark: pacsguard vs Orthanc and storescp",
        "",
        f"One machine ({machine['cpus']} CPUs, load average {machine['load_average_before'][0]} "
        f"before, {machine['load_average_after'][0]} after), all peers on loopback; "
        f"{versions['dcmtk']}, {versions['orthanc']}, pynetdicom {versions['pynetdicom']}. "
        "Compare ratios, not absolutes.",
        "",
        "## Ingest (storescu +sd, one association, median of runs, empty store each run)",
        "",
    ]
    for one in result["ingest"]:
        lines += [
            f"{one['instances']} instances of {one['matrix']}x{one['matrix']} 16-bit "
            f"({one['bytes'] / 2**20:.1f} MiB):",
            "",
            "| target | runs (s) | instances/s | vs Orthanc | vs storescp | vs storescp+fsync "
            "| all held |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r in one["rows"]:
            lines.append(
                f"| {r['target']} | {', '.join(f'{s:.2f}' for s in r['runs_s'])} | "
                f"{r['instances_per_s']} | {r.get('vs_orthanc', '-')} | "
                f"{r.get('vs_storescp', '-')} | {r.get('vs_storescp_fsync', '-')} | "
                f"{'yes' if r['verified'] else 'NO'} |"
            )
        lines.append("")
    find = result["find"]
    kinds = ", ".join(f"{k}: {v}" for k, v in find["queries_per_kind"].items())
    lines += [
        *_syncs_markdown(result.get("syncs")),
        f"## C-FIND, study level ({find['studies']:,} studies, {find['patients']:,} patients)",
        "",
        f"{find['queries']} queries ({kinds}; "
        f"matches per query {find['matches_per_query']['min']}-{find['matches_per_query']['max']}, "
        f"median {find['matches_per_query']['median']}); {find['client']}.",
        "",
        "| target | p50 ms | p99 ms | mean ms | answers = ground truth | "
        + " | ".join(f"p50 {k}" for k in find["targets"]["pacsguard"]["p50_ms_by_kind"])
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(find["targets"]["pacsguard"]["p50_ms_by_kind"]),
    ]
    for name, t in find["targets"].items():
        lines.append(
            f"| {name} | {t['p50_ms']} | {t['p99_ms']} | {t['mean_ms']} | "
            f"{t['answers_matching_ground_truth']}/{find['queries']} | "
            + " | ".join(str(v) for v in t["p50_ms_by_kind"].values())
            + " |"
        )
    lines += [
        "",
        f"pacsguard / Orthanc: p50 {find['p50_ratio_pacsguard_over_orthanc']}x, "
        f"p99 {find['p99_ratio_pacsguard_over_orthanc']}x.",
        "",
        f"## Peak RSS receiving one study of {result['rss']['instances']} instances "
        f"({result['rss']['bytes'] / 2**30:.2f} GiB) by storescu",
        "",
        "| process | seconds | MiB/s | RSS before MiB | max sampled RSS MiB | VmHWM MiB | held |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rss"]["rows"]:
        lines.append(
            f"| {r['target']} | {r['seconds']} | {r['mib_per_s']} | {r['rss_before_mib']} | "
            f"{r['rss_max_sampled_mib']} | {r['vm_hwm_mib']} | {r['held']}/{r['expected']} |"
        )
    lines += ["", "## Targets", ""]
    for v in result["targets"]:
        lines.append(
            f"- {'met' if v['met'] else '**not met**'}: {v['target']} (measured {v['measured']})"
        )
    if result["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in result["notes"]]
    lines.append("")
    return "\n".join(lines)
