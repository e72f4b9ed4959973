"""Orthanc peers: the OPEN and LOCKED profiles, their JSON configuration, start and load."""

from __future__ import annotations

import base64
import json
import secrets
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsguard.lab.synth import Counts

from ._clients import storescu
from ._errors import PeerStartError
from ._lab import LabData
from ._process import (
    LOOPBACK,
    ManagedProcess,
    executable,
    first_successful_start,
    free_port,
    require_loopback,
    start_listening,
)


@dataclass(frozen=True, slots=True)
class RegisteredModality:
    """One entry of Orthanc's "DicomModalities" allow-list: an AE title bound to a host.

    The Allow* flags take effect only for commands whose global "DicomAlwaysAllow*" flag is
    false. Get, Move, worklist C-FIND and storage commitment are always off here, so Orthanc
    never opens an association back to the (unused) port it is given.
    """

    name: str
    aet: str
    allow_echo: bool = False
    allow_store: bool = False
    allow_find: bool = False
    host: str = LOOPBACK

    def to_config(self, port: int) -> dict[str, object]:
        return {
            "AET": self.aet,
            "Host": self.host,
            "Port": port,
            "AllowEcho": self.allow_echo,
            "AllowStore": self.allow_store,
            "AllowFind": self.allow_find,
            "AllowFindWorklist": False,
            "AllowGet": False,
            "AllowMove": False,
            "AllowStorageCommitment": False,
        }


@dataclass(frozen=True, slots=True)
class OrthancProfile:
    """How exposed an Orthanc is; `orthanc_config` turns it into Orthanc's JSON options."""

    name: str
    aet: str
    check_called_aet: bool
    always_allow_echo: bool
    always_allow_store: bool
    always_allow_find: bool
    check_modality_host: bool
    strict_aet_comparison: bool
    http_authentication: bool
    modalities: tuple[RegisteredModality, ...]
    loader_aet: str
    query_aet: str
    #: Load Debian's orthanc-dicomweb plugin (QIDO-RS at /dicom-web) and serve Orthanc Explorer.
    web: bool = False


def dicomweb_plugin() -> Path | None:
    """Debian's orthanc-dicomweb plugin library, or None when the package is not installed."""
    for folder in (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc")):
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")):
            return candidate
    return None


def open_profile() -> OrthancProfile:
    """An exposed Orthanc: any calling and called AE may echo, store and query.

    DicomCheckCalledAet false (any called AE accepted), DicomAlwaysAllowEcho/Store/Find true
    (unknown calling AEs allowed; Orthanc logs "Security risk" for Find), no modalities, REST
    without authentication. Observed: echo, C-STORE and C-FIND succeed for any AE pair; nmap
    dicom-ping reports "Any AET is accepted (Insecure)".
    """
    return OrthancProfile(
        name="open",
        aet="OPENPACS",
        check_called_aet=False,
        always_allow_echo=True,
        always_allow_store=True,
        always_allow_find=True,
        check_modality_host=False,
        strict_aet_comparison=False,
        http_authentication=False,
        modalities=(),
        loader_aet="PGLOADER",
        query_aet="PGSCANNER",
    )


def locked_profile() -> OrthancProfile:
    """An Orthanc as locked as its 1.10 options allow (TLS aside).

    - DicomCheckCalledAet true, DicomAet LOCKEDPACS: another called AE is rejected at
      association: A-ASSOCIATE-RJ rejected-permanent, service-user, reason 7 (called AE title
      not recognized).
    - DicomAlwaysAllowEcho/Store/Find/FindWorklist/Get/Move all false: Orthanc then rejects an
      unregistered calling AE at association (not per command): A-ASSOCIATE-RJ permanent,
      service-user, reason 3 (calling AE title not recognized). If any of these flags were true,
      unknown AEs would be let in and only the other commands refused.
    - DicomModalities: PGLOADER (C-STORE only) and PGQUERY (C-ECHO and C-FIND only), both bound
      to 127.0.0.1. A registered AE sending a command it is not allowed gets its association
      accepted, then aborted (A-ABORT) at the command, with no C-FIND response at all.
    - DicomCheckModalityHost true: a registered AE from another address (127.0.0.2) is rejected
      like an unknown one (reason 3).
    - StrictAetComparison true: AE titles match case-sensitively ("pgquery" is unknown).
    - UnknownSopClassAccepted false (default); REST with AuthenticationEnabled and one random
      user; RemoteAccessAllowed false; Explorer and WebDAV off. No DICOM TLS (needs certificates).
    """
    return OrthancProfile(
        name="locked",
        aet="LOCKEDPACS",
        check_called_aet=True,
        always_allow_echo=False,
        always_allow_store=False,
        always_allow_find=False,
        check_modality_host=True,
        strict_aet_comparison=True,
        http_authentication=True,
        modalities=(
            RegisteredModality("loader", "PGLOADER", allow_store=True),
            RegisteredModality("query", "PGQUERY", allow_echo=True, allow_find=True),
        ),
        loader_aet="PGLOADER",
        query_aet="PGQUERY",
    )


def orthanc_config(
    profile: OrthancProfile,
    *,
    dicom_port: int,
    http_port: int,
    storage_dir: Path,
    http_user: tuple[str, str] | None,
    modality_port: int,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Orthanc's JSON configuration for `profile` (options checked against Orthanc 1.10.1),
    with `extra` options on top (e.g. "LimitFindResults").

    "Plugins": [] keeps Debian's plugins (/usr/share/orthanc/plugins) out, except the DICOMweb
    plugin for a `web` profile; storage and index
    live in `storage_dir` with "SyncStorageArea" (fsync per file); HTTP is needed for readiness
    and /statistics and refuses non-loopback clients ("RemoteAccessAllowed": false).
    """
    config: dict[str, object] = {
        "Name": f"pacsguard-interop-{profile.name}",
        "StorageDirectory": str(storage_dir),
        "IndexDirectory": str(storage_dir),
        "SyncStorageArea": True,
        "Plugins": [str(dicomweb_plugin())] if profile.web and dicomweb_plugin() else [],
        "ConcurrentJobs": 1,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpThreadsCount": 4,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": profile.http_authentication,
        "RegisteredUsers": dict([http_user]) if http_user else {},
        "OrthancExplorerEnabled": profile.web,
        "WebDavEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": profile.aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": profile.check_called_aet,
        "DicomAlwaysAllowEcho": profile.always_allow_echo,
        "DicomAlwaysAllowStore": profile.always_allow_store,
        "DicomAlwaysAllowFind": profile.always_allow_find,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": profile.check_modality_host,
        "StrictAetComparison": profile.strict_aet_comparison,
        "UnknownSopClassAccepted": False,
        "DicomTlsEnabled": False,
        "DicomModalitiesInDatabase": False,
        "DicomModalities": {m.name: m.to_config(modality_port) for m in profile.modalities},
        "DicomScpTimeout": 10,
    }
    if profile.web:
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    config.update(extra or {})
    return config


@dataclass(frozen=True, slots=True)
class OrthancPeer:
    """A running, loaded Orthanc. `port` is DICOM; `loader_aet`/`query_aet` are allowed callers."""

    host: str
    port: int
    http_port: int
    aet: str
    profile: OrthancProfile
    counts: Counts
    workdir: Path
    http_auth: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def loader_aet(self) -> str:
        return self.profile.loader_aet

    @property
    def query_aet(self) -> str:
        return self.profile.query_aet


def orthanc_rest_get(
    peer: OrthancPeer, path: str, *, authenticate: bool = True, timeout: float = 10.0
) -> Any:
    """GET a REST resource from the peer's loopback HTTP port (proxies bypassed); JSON answer."""
    request = urllib.request.Request(f"http://{require_loopback(peer.host)}:{peer.http_port}{path}")
    if authenticate and peer.http_auth is not None:
        token = base64.b64encode(":".join(peer.http_auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return json.load(response)


def orthanc_counts(peer: OrthancPeer) -> Counts:
    stats = orthanc_rest_get(peer, "/statistics")
    return Counts(
        patients=int(stats["CountPatients"]),
        studies=int(stats["CountStudies"]),
        series=int(stats["CountSeries"]),
        instances=int(stats["CountInstances"]),
    )


@contextmanager
def running_orthanc(
    profile: OrthancProfile,
    workdir: Path,
    lab: LabData,
    *,
    timeout: float = 30.0,
    extra: Mapping[str, object] | None = None,
    http_user: tuple[str, str] | None = None,
) -> Iterator[OrthancPeer]:
    """Start Orthanc with `profile` (and `extra` options), C-STORE the lab data as
    `profile.loader_aet`, verify counts.

    With authentication, the one REST user is random unless `http_user` names it."""
    orthanc = executable("Orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    http_auth = None
    if profile.http_authentication:
        http_auth = http_user or ("pgharness", secrets.token_urlsafe(18))

    def start() -> tuple[ManagedProcess, int, int]:
        dicom_port, http_port = free_port(), free_port()
        config = orthanc_config(
            profile,
            dicom_port=dicom_port,
            http_port=http_port,
            storage_dir=workdir / "storage",
            http_user=http_auth,
            modality_port=free_port(),
            extra=extra,
        )
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        config_path.chmod(0o600)
        argv = [str(orthanc), "--no-jobs", str(config_path)]
        name = f"orthanc-{profile.name}"
        process = start_listening(name, argv, (dicom_port, http_port), workdir, timeout)
        return process, dicom_port, http_port

    process, dicom_port, http_port = first_successful_start(start)
    try:
        peer = OrthancPeer(
            host=LOOPBACK,
            port=dicom_port,
            http_port=http_port,
            aet=profile.aet,
            profile=profile,
            counts=lab.counts,
            workdir=workdir,
            http_auth=http_auth,
        )
        orthanc_rest_get(peer, "/system")
        load = storescu(
            peer.host, peer.port, [lab.directory], calling_aet=peer.loader_aet, called_aet=peer.aet
        )
        load.raise_for_failure(f"loading Orthanc {profile.name} as {peer.loader_aet}")
        held = orthanc_counts(peer)
        if held != lab.counts:
            raise PeerStartError(f"Orthanc {profile.name} holds {held}, expected {lab.counts}")
        yield peer
    finally:
        process.stop()
