"""The servers under test (pacsguard, Orthanc, storescp) and the clients that drive them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.interop.peers import (
    LOOPBACK,
    executable,
    free_port,
    open_profile,
    orthanc_config,
    peer_env,
    wait_for_port,
)

from benchmarks.archive.senders import Sender
from pacsguard.archive.security.bootstrap import hash_secret

OUR_AET = "PACSGUARD"
PLAIN_AET = "BENCH"  # address-bound peer: store + find over the loopback plaintext listener
TLS_AET = "BENCHTLS"  # user-password peer: store over TLS
ORTHANC_AET = "ORTHANC"
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


def _wait_ready(
    proc: subprocess.Popen[bytes], ports: Sequence[int], log: Path, *, says_ready: bool = False
) -> None:
    for port in ports:
        try:
            wait_for_port(LOOPBACK, port, 60.0)
        except Exception as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{log.stem} did not listen on {port}: {tail}") from exc
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited: {log.read_text(errors='replace')[-2000:]}")
    # pacsguard with worker processes listens (its supervisor binds) before its workers
    # accept: wait for the "ready" it prints once they do.
    deadline = time.monotonic() + 60.0
    while says_ready and time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "\nready" in text or text.startswith("ready"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited: {text[-2000:]}")
        time.sleep(0.05)


def storescu(
    port: int, called: str, calling: str, directories: Sequence[Path], extra: Sequence[str] = ()
) -> list[str]:
    return [
        str(executable("storescu")), "-aet", calling, "-aec", called, *extra,
        "+sd", LOOPBACK, str(port), *map(str, directories),
    ]  # fmt: skip


def warm_page_cache(directory: Path) -> None:
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
    #: Run pacsguard from this source tree (an earlier commit, for before/after rows) instead
    #: of the installed one.
    src: Path | None = None
    #: `[server] workers` (through PACSGUARD_SERVER_WORKERS); None: the config's own.
    workers: int | None = None

    def at(self, src: Path) -> Pacsguard:
        """The same data-folder template and peers, served by the code under `src`."""
        return Pacsguard(self.template, self.password, self.processes, src=src)

    def with_workers(self, workers: int) -> Pacsguard:
        """The same data-folder template and peers, served by `workers` worker processes."""
        return Pacsguard(self.template, self.password, self.processes, workers=workers)

    def _argv(self, *args: str) -> list[str]:
        if self.src is None:
            return [_pacsguard(), *args]
        return [sys.executable, "-c", _RUN_CLI, *args]

    def _env(self) -> dict[str, str]:
        env = peer_env()
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        if self.workers is not None:
            env["PACSGUARD_SERVER_WORKERS"] = str(self.workers)
        return env

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
            if self.src is not None:  # an earlier revision refuses settings it does not know
                config = data_dir / "pacsguard.toml"
                text = config.read_text(encoding="utf-8")
                config.write_text(re.sub(r"(?m)^workers = 1\n", "", text), encoding="utf-8")
        self.data_dir = data_dir
        self.plain_port, self.tls_port = free_port(), free_port()
        log = data_dir.parent / f"{data_dir.name}.serve.log"
        argv = self._argv(
            "serve", "--data-dir", str(data_dir), "--port", str(self.tls_port),
            "--plaintext-port", str(self.plain_port), "--no-self-check",
        )  # fmt: skip
        self.proc = self.processes.start(argv, log, env=self._env())
        _wait_ready(self.proc, (self.tls_port, self.plain_port), log, says_ready=True)

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

    def sender(self, *, tls: bool, user: bool) -> Sender:
        """How a client reaches this archive: over TLS or the loopback plaintext listener, as
        the address-bound AE or with PS3.7 username + password."""
        extra: list[str] = []
        if tls:
            extra += ["+tla", "+cf", str(self.data_dir / "tls" / "ca.crt")]
        if user:
            extra += ["--user", "bench", "--password", self.password]
        return Sender(
            self.tls_port if tls else self.plain_port,
            OUR_AET,
            TLS_AET if user else PLAIN_AET,
            tuple(extra),
            "bench" if user else None,
            self.password if user else None,
        )

    def fsck(self) -> int:
        """Instances in the index after `pacsguard fsck` (exit 0: index and blobs agree)."""
        done = subprocess.run(
            self._argv("fsck", "--data-dir", str(self.data_dir)),
            env=self._env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        found = _FSCK_COUNT.search(done.stdout)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"pacsguard fsck failed ({done.returncode}): {done.stdout[-2000:]}")
        return int(found.group(1))


_RUN_CLI = "import sys; sys.argv[0] = 'pacsguard'; from pacsguard.cli import main; main()"


def export_source(revision: str, into: Path) -> Path:
    """The `src` folder of this repository at `revision` (git archive), for `Pacsguard.at`."""
    into.mkdir(parents=True)
    repo = Path(__file__).resolve().parents[2]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", revision, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _pacsguard() -> str:
    return str(Path(sys.executable).with_name("pacsguard"))


@dataclass
class Orthanc:
    """Debian's Orthanc with the interop harness's OPEN profile (any AE may store and find):
    SQLite index and files in `storage`, "SyncStorageArea": true, no plugins."""

    processes: Processes
    #: Orthanc options on top of the profile's (e.g. "DicomThreadsCount").
    extra: dict[str, Any] = field(default_factory=dict)
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
            extra=self.extra,
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

    def sender(self) -> Sender:
        return Sender(self.port, ORTHANC_AET, PLAIN_AET)


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
