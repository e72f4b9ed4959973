"""Real DICOM peers on loopback for interoperability tests: Orthanc, dcmqrscp, storescp,
pynetdicom's qrscp, nmap.

Every peer runs as its own process (own session, logs in files under its work directory) on a
fresh ephemeral port of 127.0.0.1, is loaded with the project's synthetic lab archive through
dcmtk's `storescu`, and is checked to hold exactly the archive's counts before a test sees it.
The `running_*` context managers start, load, verify and stop one peer each; `conftest.py` wraps
them in fixtures. This module is the harness's public surface; the implementation lives in the
private modules beside it (processes, clients, lab data, Orthanc, dcmtk peers, nmap).

Network rule: every helper refuses a host outside 127.0.0.0/8 (`require_loopback`) and never
resolves a name. Clients connect to 127.0.0.1 (from 127.0.0.1, or from 127.0.0.2 to test a
peer's address binding). Caveat: Orthanc 1.10, storescp and dcmqrscp have no bind-address
option, so their listening sockets are bound to 0.0.0.0 while a test runs; the Orthanc REST API
refuses non-loopback clients ("RemoteAccessAllowed": false) and the peers hold synthetic data only.

dcmtk and Orthanc processes get TCP_NODELAY=1 (they stall on delayed ACKs otherwise) and no proxy
variables. dcmtk tools are looked up outside the virtualenv, whose bin/ holds pynetdicom's own
`echoscu`/`findscu`/`storescu` scripts with different options.

Errors::

    PeerError                 anything the harness could not do
    ├── ToolMissingError      an executable (dcmtk, Orthanc, nmap) is not installed
    └── PeerStartError        a peer did not start, load or verify; carries the log tail
"""

from __future__ import annotations

from ._clients import (
    STUDY_RETURN_KEYS,
    AssociateAnswer,
    FindOutcome,
    Rejection,
    ToolOutcome,
    echoscu,
    findscu_studies,
    raw_associate,
    storescu,
)
from ._dcmtk_peers import (
    DcmqrscpPeer,
    StorescpPeer,
    dcmqrscp_config,
    running_dcmqrscp,
    running_storescp,
)
from ._errors import PeerError, PeerStartError, ToolMissingError
from ._lab import LabData, write_lab_data
from ._nmap import DicomPing, nmap_dicom_ping
from ._orthanc import (
    OrthancPeer,
    OrthancProfile,
    RegisteredModality,
    locked_profile,
    open_profile,
    orthanc_config,
    orthanc_counts,
    orthanc_rest_get,
    running_orthanc,
)
from ._process import (
    LOOPBACK,
    ManagedProcess,
    executable,
    find_executable,
    free_port,
    peer_env,
    require_loopback,
    run_tool,
    wait_for_port,
)
from ._qrscp import QrscpPeer, qrscp_config, running_qrscp

__all__ = [
    "LOOPBACK",
    "STUDY_RETURN_KEYS",
    "AssociateAnswer",
    "DcmqrscpPeer",
    "DicomPing",
    "FindOutcome",
    "LabData",
    "ManagedProcess",
    "OrthancPeer",
    "OrthancProfile",
    "PeerError",
    "PeerStartError",
    "QrscpPeer",
    "RegisteredModality",
    "Rejection",
    "StorescpPeer",
    "ToolMissingError",
    "ToolOutcome",
    "dcmqrscp_config",
    "echoscu",
    "executable",
    "find_executable",
    "findscu_studies",
    "free_port",
    "locked_profile",
    "nmap_dicom_ping",
    "open_profile",
    "orthanc_config",
    "orthanc_counts",
    "orthanc_rest_get",
    "peer_env",
    "qrscp_config",
    "raw_associate",
    "require_loopback",
    "run_tool",
    "running_dcmqrscp",
    "running_orthanc",
    "running_qrscp",
    "running_storescp",
    "storescu",
    "wait_for_port",
    "write_lab_data",
]
