"""The archive half of `pacsguard demo`: a secure archive on loopback, fed and then scanned.

1. `pacsguard init` in the demo folder (CA, server certificate, admin secret, config);
2. the archive starts with its secure defaults (TLS on 127.0.0.1, everyone denied but admin),
   with DICOMweb (HTTPS) enabled on a free port;
3. the administrator stores a synthetic study over TLS with PS3.7 user identity;
4. the scanner probes the archive as a stranger, DIMSE and HTTPS (the self-check);
5. a token-authenticated QIDO-RS / WADO-RS round trip (`demo_web`);
6. the audit chain is verified.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from pacsguard.archive.app import RunningArchive, start_archive
from pacsguard.archive.audit.log import verify
from pacsguard.archive.config import load_settings
from pacsguard.archive.demo_web import WebDemo, run_web_demo
from pacsguard.archive.security.bootstrap import initialize
from pacsguard.archive.security.tls import client_context
from pacsguard.archive.selfcheck import self_check
from pacsguard.dicom import uids
from pacsguard.lab.synth import build_dataset, generate_archive
from pacsguard.scan.model import HostReport


@dataclass(frozen=True, slots=True)
class ArchiveDemo:
    running: RunningArchive
    stored: int
    refused: int
    reports: list[HostReport]
    audit_ok: bool
    audit_lines: int
    web: WebDemo | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_archive_demo(folder: Path, seed: int) -> ArchiveDemo:
    """Start the secure archive in `folder`, store through TLS + user identity, scan it.

    The archive is left running; the caller stops it (`result.running.stop()`).
    """
    marker = folder / ".pacsguard-demo"
    if marker.exists():  # a previous demo's archive: start afresh (we made it, we remove it)
        shutil.rmtree(folder)
    init = initialize(folder)
    marker.write_text("made by `pacsguard demo`; removed by the next demo run\n")
    layout = init.layout
    settings = load_settings(
        layout.config_file,
        env={},
        overrides={
            "server.dimse_port": _free_port(),
            "dicomweb.enabled": True,
            "dicomweb.port": _free_port(),
        },
    )
    running = start_archive(settings)
    endpoint = running.endpoints[0]
    stored = refused = 0
    sent: dict[str, bytes] = {}  # SOP Instance UID -> the Part 10 bytes of what was stored
    if init.admin_secret is not None:  # a fresh demo folder: we hold the admin secret
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = init.admin_username.encode()
        identity.secondary_field = init.admin_secret.encode()
        ae = AE(ae_title=init.admin_ae_title)
        for sop_class in (uids.CT_IMAGE_STORAGE, uids.MR_IMAGE_STORAGE):
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        tls = client_context(settings.tls.ca_file)
        assoc = ae.associate(
            endpoint.host,
            endpoint.port,
            ae_title=settings.server.ae_title,
            ext_neg=[identity],
            tls_args=(tls, "localhost"),
        )
        if assoc.is_established:
            lab = generate_archive(seed, 2)
            for patient, study, series, instance in lab.walk():
                ds = build_dataset(patient, study, series, instance)
                status = assoc.send_c_store(ds)
                if status and status.Status == 0:
                    stored += 1
                    sent[instance.sop_instance_uid] = _part10(ds)
                else:
                    refused += 1
            assoc.release()
    reports = self_check(running)
    web = None
    https = next((e for e in running.endpoints if e.protocol == "https"), None)
    if https is not None and init.admin_secret is not None:
        web = run_web_demo(str(https), settings.tls.ca_file, folder, init.admin_username, sent)
    check = verify(settings.audit.log_path)
    return ArchiveDemo(running, stored, refused, reports, check.ok, check.lines, web)


def _part10(ds: Dataset) -> bytes:
    """The data set as a Part 10 file, as the archive keeps what it is sent."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
