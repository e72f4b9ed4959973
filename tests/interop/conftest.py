"""Fixtures that start real DICOM peers on loopback, loaded with the synthetic lab archive.

All are session-scoped: each peer starts once per pytest process (under xdist, once per worker
that needs it; every worker has its own tmp dirs and ephemeral ports, so workers never share or
collide). Peers are shared by every test of the session: treat them as read-only (C-ECHO, C-FIND,
scans); a test that must change a peer's contents starts its own with `peers.running_*`.
A fixture skips its tests when the executable it needs is not installed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from .peers import (
    LOOPBACK,
    DcmqrscpPeer,
    LabData,
    OrthancPeer,
    QrscpPeer,
    StorescpPeer,
    find_executable,
    locked_profile,
    open_profile,
    running_dcmqrscp,
    running_orthanc,
    running_qrscp,
    running_storescp,
    write_lab_data,
)

LAB_SEED = 20240229
LAB_PATIENTS = 6


def require_tools(*names: str) -> None:
    """Skip the requesting test when one of `names` is not installed; fail instead under CI
    (where `./dev test` installs them), so that a missing peer can never pass silently."""
    missing = [name for name in names if find_executable(name) is None]
    if missing:
        message = f"not installed: {', '.join(missing)} (Debian: dcmtk, orthanc, nmap, stunnel4)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def lab_data(tmp_path_factory: pytest.TempPathFactory) -> LabData:
    """The synthetic archive (seed LAB_SEED, LAB_PATIENTS patients) written as Part 10 files."""
    return write_lab_data(tmp_path_factory.mktemp("lab"), seed=LAB_SEED, patients=LAB_PATIENTS)


@pytest.fixture(scope="session")
def open_orthanc(
    tmp_path_factory: pytest.TempPathFactory, lab_data: LabData
) -> Iterator[OrthancPeer]:
    """Orthanc with the OPEN profile (any AE may echo, store, query), loaded and verified."""
    require_tools("Orthanc", "storescu")
    with running_orthanc(open_profile(), tmp_path_factory.mktemp("orthanc-open"), lab_data) as peer:
        yield peer


@pytest.fixture(scope="session")
def locked_orthanc(
    tmp_path_factory: pytest.TempPathFactory, lab_data: LabData
) -> Iterator[OrthancPeer]:
    """Orthanc with the LOCKED profile (AET LOCKEDPACS, allow-listed AEs), loaded and verified."""
    require_tools("Orthanc", "storescu")
    workdir = tmp_path_factory.mktemp("orthanc-locked")
    with running_orthanc(locked_profile(), workdir, lab_data) as peer:
        yield peer


@pytest.fixture(scope="session")
def dcmqrscp_peer(
    tmp_path_factory: pytest.TempPathFactory, lab_data: LabData
) -> Iterator[DcmqrscpPeer]:
    """dcmqrscp with OPENQR (any peer) and LOCKEDQR (PGTRUSTED@127.0.0.1 only), both loaded."""
    require_tools("dcmqrscp", "storescu", "findscu")
    with running_dcmqrscp(tmp_path_factory.mktemp("dcmqrscp"), lab_data) as peer:
        yield peer


@pytest.fixture(scope="session")
def qrscp_peer(tmp_path_factory: pytest.TempPathFactory, lab_data: LabData) -> Iterator[QrscpPeer]:
    """pynetdicom's qrscp application (AE QRSCP, any peer), loaded with the lab data."""
    require_tools("storescu")
    with running_qrscp(tmp_path_factory.mktemp("qrscp"), lab_data) as peer:
        yield peer


@pytest.fixture(scope="session")
def storescp_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorescpPeer]:
    """storescp with AE title PGSTORESCP (C-ECHO and C-STORE only), empty at start."""
    require_tools("storescp")
    with running_storescp(tmp_path_factory.mktemp("storescp")) as peer:
        yield peer


@pytest.fixture(scope="session")
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nothing else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])
