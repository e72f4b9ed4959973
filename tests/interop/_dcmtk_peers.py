"""dcmtk peers: dcmqrscp (an open and a locked AE on one port) and storescp."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pacsguard.lab.synth import Counts

from ._clients import findscu_studies, storescu
from ._errors import PeerStartError
from ._lab import LabData, verify_study_count
from ._process import (
    LOOPBACK,
    ManagedProcess,
    executable,
    first_successful_start,
    free_port,
    require_loopback,
    start_listening,
)

_DCMQRSCP_MAX_STUDIES = 500  # dcmqrscp caps maxStudies per storage area at 500


@dataclass(frozen=True, slots=True)
class DcmqrscpPeer:
    """A running dcmqrscp with two AEs on one port, each loaded with the lab data.

    `open_aet` accepts any calling AE from any host; `locked_aet` accepts only `trusted_aet`
    calling from `trusted_host` (the port in its HostTable entry is not checked on incoming
    associations; it would be the C-MOVE destination).
    """

    host: str
    port: int
    open_aet: str
    locked_aet: str
    trusted_aet: str
    trusted_host: str
    counts: Counts
    workdir: Path
    open_storage: Path
    locked_storage: Path


def dcmqrscp_config(
    *,
    port: int,
    open_aet: str,
    open_storage: Path,
    locked_aet: str,
    locked_storage: Path,
    trusted_aet: str,
    trusted_host: str,
    trusted_port: int,
) -> str:
    """dcmqrscp.cfg text: global settings, a HostTable with the one trusted peer, an AETable.

    Storage areas are RW (accept C-STORE) with dcmqrscp's largest quota, 500 studies: a bigger
    lab archive would make it delete the oldest studies, so `running_dcmqrscp` refuses one.
    The HostTable holds an IP, not a name; that only matches because dcmqrscp runs with
    --disable-host-lookup (it then sees the peer's IP).
    """
    for path in (open_storage, locked_storage):
        if any(ch.isspace() for ch in str(path)):
            raise ValueError(f"dcmqrscp cannot parse a storage path with whitespace: {path}")
    return "\n".join(
        [
            f"NetworkTCPPort  = {port}",
            "MaxPDUSize      = 16384",
            "MaxAssociations = 16",
            "",
            "HostTable BEGIN",
            f"trusted_peer = ({trusted_aet}, {require_loopback(trusted_host)}, {trusted_port})",
            "HostTable END",
            "",
            "VendorTable BEGIN",
            "VendorTable END",
            "",
            "AETable BEGIN",
            f"{open_aet}  {open_storage}  RW  ({_DCMQRSCP_MAX_STUDIES}, 1024mb)  ANY",
            f"{locked_aet}  {locked_storage}  RW  ({_DCMQRSCP_MAX_STUDIES}, 1024mb)  trusted_peer",
            "AETable END",
            "",
        ]
    )


@contextmanager
def running_dcmqrscp(
    workdir: Path,
    lab: LabData,
    *,
    open_aet: str = "OPENQR",
    locked_aet: str = "LOCKEDQR",
    trusted_aet: str = "PGTRUSTED",
    loader_aet: str = "PGLOADER",
    timeout: float = 15.0,
) -> Iterator[DcmqrscpPeer]:
    """Start dcmqrscp, load both AEs, verify study and instance counts.

    dcmqrscp forks a child per association (its --single-process mode exits after the first
    association); teardown signals the whole process group. --disable-host-lookup keeps it from
    resolving peer addresses (no DNS) and lets the HostTable name the trusted peer by IP.
    """
    dcmqrscp = executable("dcmqrscp")
    if lab.counts.studies > _DCMQRSCP_MAX_STUDIES:
        raise ValueError(f"dcmqrscp keeps at most {_DCMQRSCP_MAX_STUDIES} studies per AE")
    workdir.mkdir(parents=True, exist_ok=True)
    open_storage, locked_storage = workdir / "open", workdir / "locked"
    open_storage.mkdir(exist_ok=True)
    locked_storage.mkdir(exist_ok=True)

    def start() -> tuple[ManagedProcess, int]:
        port = free_port()
        config_path = workdir / "dcmqrscp.cfg"
        config_path.write_text(
            dcmqrscp_config(
                port=port,
                open_aet=open_aet,
                open_storage=open_storage,
                locked_aet=locked_aet,
                locked_storage=locked_storage,
                trusted_aet=trusted_aet,
                trusted_host=LOOPBACK,
                trusted_port=free_port(),
            )
        )
        argv = [str(dcmqrscp), "-v", "-dhl", "-c", str(config_path)]
        return start_listening("dcmqrscp", argv, (port,), workdir, timeout), port

    process, port = first_successful_start(start)
    try:
        peer = DcmqrscpPeer(
            host=LOOPBACK,
            port=port,
            open_aet=open_aet,
            locked_aet=locked_aet,
            trusted_aet=trusted_aet,
            trusted_host=LOOPBACK,
            counts=lab.counts,
            workdir=workdir,
            open_storage=open_storage,
            locked_storage=locked_storage,
        )
        for called, calling in ((open_aet, loader_aet), (locked_aet, trusted_aet)):
            what = f"dcmqrscp {called} as {calling}"
            storescu(
                peer.host, peer.port, [lab.directory], calling_aet=calling, called_aet=called
            ).raise_for_failure(f"loading {what}")
            found = findscu_studies(
                peer.host,
                peer.port,
                workdir / f"verify-{called}",
                calling_aet=calling,
                called_aet=called,
            )
            verify_study_count(found, lab.counts.studies, f"querying {what}")
        for storage in (open_storage, locked_storage):
            stored = [p for p in storage.iterdir() if p.name != "index.dat"]
            if len(stored) != lab.counts.instances:
                raise PeerStartError(f"{storage} holds {len(stored)} files, expected instances")
        yield peer
    finally:
        process.stop()


# --- storescp -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StorescpPeer:
    """A running storescp: accepts C-ECHO and C-STORE (no C-FIND), files land in `output_dir`."""

    host: str
    port: int
    aet: str
    output_dir: Path
    workdir: Path


@contextmanager
def running_storescp(
    workdir: Path,
    *,
    aet: str = "PGSTORESCP",
    timeout: float = 15.0,
    options: Sequence[str] = (),
) -> Iterator[StorescpPeer]:
    """storescp on a free loopback port; `options` go before the port (e.g. +tls ...)."""
    storescp = executable("storescp")
    output_dir = workdir / "received"
    output_dir.mkdir(parents=True, exist_ok=True)

    def start() -> tuple[ManagedProcess, int]:
        port = free_port()
        argv = [str(storescp), "-v", "-aet", aet, "-od", str(output_dir), *options, str(port)]
        return start_listening("storescp", argv, (port,), workdir, timeout), port

    process, port = first_successful_start(start)
    try:
        yield StorescpPeer(LOOPBACK, port, aet, output_dir, workdir)
    finally:
        process.stop()
