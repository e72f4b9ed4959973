"""pynetdicom's own Query/Retrieve SCP application (`python -m pynetdicom qrscp`).

It matters to the scanner because it answers a C-FIND at any level with one response per
matching *instance* (its database search returns instances, and each becomes an identifier at
the query level), and ignores optional keys such as NumberOfStudyRelatedInstances.

It runs as its own process from this virtualenv, bound to 127.0.0.1 (`bind_address`), with its
SQLite database and instance store in the work directory, identifier logging off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pacsguard.lab.synth import Counts

from ._clients import storescu
from ._errors import PeerStartError
from ._lab import LabData
from ._process import LOOPBACK, ManagedProcess, first_successful_start, free_port, start_listening


@dataclass(frozen=True, slots=True)
class QrscpPeer:
    """A running qrscp loaded with the lab data. It accepts any calling and called AE."""

    host: str
    port: int
    aet: str
    counts: Counts
    workdir: Path


def qrscp_config(*, aet: str, port: int, database: Path, instances: Path) -> str:
    """qrscp's INI configuration (keys as in pynetdicom's apps/qrscp/default.ini); no move
    destinations. Absolute paths, because qrscp joins relative ones to its package directory."""
    return "\n".join(
        [
            "[DEFAULT]",
            f"    ae_title: {aet}",
            f"    port: {port}",
            "    max_pdu: 16382",
            "    acse_timeout: 30",
            "    dimse_timeout: 30",
            "    network_timeout: 30",
            f"    bind_address: {LOOPBACK}",
            f"    instance_location: {instances.resolve()}",
            f"    database_location: {database.resolve()}",
            "    log_identifier: False",
            "",
        ]
    )


@contextmanager
def running_qrscp(
    workdir: Path, lab: LabData, *, aet: str = "QRSCP", timeout: float = 30.0
) -> Iterator[QrscpPeer]:
    """Start qrscp, C-STORE the lab data with dcmtk's storescu, check every instance landed."""
    workdir.mkdir(parents=True, exist_ok=True)
    instances = workdir / "instances"

    def start() -> tuple[ManagedProcess, int]:
        port = free_port()
        config = workdir / "qrscp.ini"
        config.write_text(
            qrscp_config(aet=aet, port=port, database=workdir / "qrscp.sqlite", instances=instances)
        )
        argv = [sys.executable, "-m", "pynetdicom", "qrscp", "-q", "-c", str(config)]
        return start_listening("qrscp", argv, (port,), workdir, timeout), port

    process, port = first_successful_start(start)
    try:
        peer = QrscpPeer(LOOPBACK, port, aet, lab.counts, workdir)
        storescu(
            peer.host, peer.port, [lab.directory], calling_aet="PGLOADER", called_aet=aet
        ).raise_for_failure("loading qrscp")
        stored = [p for p in instances.iterdir() if p.is_file()]
        if len(stored) != lab.counts.instances:
            raise PeerStartError(
                f"qrscp stored {len(stored)} instances, expected {lab.counts.instances}"
            )
        yield peer
    finally:
        process.stop()
