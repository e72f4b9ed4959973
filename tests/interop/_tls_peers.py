"""DICOM behind TLS: Debian's stunnel4 in front of dcmqrscp, and Orthanc with DICOM-TLS on.

Certificates come from `pacsguard.lab.certificates` (a lab CA per peer, made per session). For
legacy versions and weak certificates stunnel runs with `securityLevel = 0` (OpenSSL 3 refuses
to serve TLS 1.0/1.1, 1024-bit keys or SHA-1 certificates otherwise).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pacsguard.lab.certificates import CertSpec, LabCA
from pacsguard.lab.synth import Counts

from ._errors import PeerStartError
from ._lab import LabData
from ._orthanc import OrthancPeer, open_profile, orthanc_config, orthanc_counts
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
class StunnelService:
    """One TLS front: its certificate, TLS versions and client-certificate policy."""

    name: str
    certificate: CertSpec
    min_version: str = "TLSv1.2"  # stunnel's names: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3
    max_version: str = "TLSv1.3"
    client_certificate: str = "none"  # "none", "optional" (requested), "required"
    legacy: bool = False  # OpenSSL security level 0: old versions, small keys, SHA-1


def stunnel_config(
    services: Sequence[tuple[StunnelService, int, Path, Path]],
    *,
    backend_port: int,
    ca_file: Path,
    log_file: Path,
) -> str:
    """stunnel.conf: foreground, no PID file, one [section] per (service, port, cert, key)."""
    lines = ["foreground = yes", "pid =", "syslog = no", f"output = {log_file}", "debug = 5", ""]
    for service, port, cert, key in services:
        lines += [
            f"[{service.name}]",
            f"accept = {require_loopback(LOOPBACK)}:{port}",
            f"connect = {LOOPBACK}:{backend_port}",
            f"cert = {cert}",
            f"key = {key}",
            f"sslVersionMin = {service.min_version}",
            f"sslVersionMax = {service.max_version}",
        ]
        if service.legacy:
            lines += ["securityLevel = 0", "ciphers = DEFAULT:@SECLEVEL=0"]
        if service.client_certificate != "none":
            lines += [f"CAfile = {ca_file}", "verifyChain = yes"]
            if service.client_certificate == "optional":
                lines.append("requireCert = no")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class StunnelPeer:
    """A running stunnel; `ports` by service name, all forwarding to `backend_port`."""

    host: str
    ports: dict[str, int]
    backend_port: int
    ca: LabCA
    workdir: Path


@contextmanager
def running_stunnel(
    workdir: Path, backend_port: int, services: Sequence[StunnelService], *, timeout: float = 15.0
) -> Iterator[StunnelPeer]:
    """Start stunnel4 with one TLS front per service, all in front of `backend_port`."""
    stunnel = executable("stunnel4")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = LabCA("pacsguard interop stunnel CA")
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    pairs = [ca.issue(s.certificate).write(workdir, s.name) for s in services]

    def start() -> tuple[ManagedProcess, dict[str, int]]:
        ports = {s.name: free_port() for s in services}
        config = workdir / "stunnel.conf"
        config.write_text(
            stunnel_config(
                [(s, ports[s.name], *pair) for s, pair in zip(services, pairs, strict=True)],
                backend_port=backend_port,
                ca_file=ca_file,
                log_file=workdir / "stunnel.log",
            )
        )
        process = start_listening(
            "stunnel", [str(stunnel), str(config)], ports.values(), workdir, timeout
        )
        return process, ports

    process, ports = first_successful_start(start)
    try:
        yield StunnelPeer(LOOPBACK, ports, backend_port, ca, workdir)
    finally:
        process.stop()


# --- Orthanc with DICOM-TLS -------------------------------------------------------------------


def _post_instance(http_port: int, path: Path, timeout: float = 30.0) -> None:
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{http_port}/instances", data=path.read_bytes(), method="POST"
    )
    request.add_header("Content-Type", "application/dicom")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        answer = json.load(response)
    if answer.get("Status") not in ("Success", "AlreadyStored"):
        raise PeerStartError(f"Orthanc refused {path.name}: {answer.get('Status')}")


@contextmanager
def running_tls_orthanc(
    workdir: Path,
    lab: LabData,
    *,
    remote_certificate_required: bool,
    timeout: float = 30.0,
) -> Iterator[tuple[OrthancPeer, LabCA]]:
    """The OPEN Orthanc profile with DICOM-TLS on its DICOM port (Orthanc 1.10 options
    DicomTlsEnabled, DicomTlsCertificate, DicomTlsPrivateKey, DicomTlsTrustedCertificates,
    DicomTlsRemoteCertificateRequired), loaded over REST and checked to hold the lab archive."""
    orthanc = executable("Orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    profile = open_profile()
    ca = LabCA("pacsguard interop Orthanc CA")
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    cert, key = ca.issue(CertSpec("orthanc.interop.lab", key="rsa", key_bits=2048)).write(
        workdir, "orthanc"
    )

    def start() -> tuple[ManagedProcess, int, int]:
        dicom_port, http_port = free_port(), free_port()
        config = orthanc_config(
            profile,
            dicom_port=dicom_port,
            http_port=http_port,
            storage_dir=workdir / "storage",
            http_user=None,
            modality_port=free_port(),
        )
        config.update(
            {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(cert),
                "DicomTlsPrivateKey": str(key),
                "DicomTlsTrustedCertificates": str(ca_file),
                "DicomTlsRemoteCertificateRequired": remote_certificate_required,
            }
        )
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        config_path.chmod(0o600)
        argv = [str(orthanc), "--no-jobs", str(config_path)]
        name = "orthanc-tls"
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
        )
        for path in lab.files:
            _post_instance(http_port, path)
        held: Counts = orthanc_counts(peer)
        if held != lab.counts:
            raise PeerStartError(f"Orthanc with DICOM-TLS holds {held}, expected {lab.counts}")
        yield peer, ca
    finally:
        process.stop()
