"""The archive scans itself: Find's probe against Fix's own endpoints, as a stranger would.

The probe presents the scanner's unknown calling AE and no credentials. Over TLS it does not
verify the server certificate (a stranger has no reason to trust our CA) and offers no client
certificate. A secure archive yields no finding at high or above; the lab profile yields the
open ones.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

from pacsguard.archive.app import RunningArchive
from pacsguard.archive.runtime import Endpoint
from pacsguard.dicom.client import Timeouts
from pacsguard.scan.checks import assess
from pacsguard.scan.model import HostReport, Severity, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse


def stranger_tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _scan(endpoints: Sequence[Endpoint]) -> list[HostReport]:
    reports = []
    for endpoint in endpoints:
        if endpoint.protocol != "dicom":
            continue  # other transports' self-checks are their own
        options = ProbeOptions(
            timeouts=Timeouts(connect=3.0, read=5.0),
            total_timeout=30.0,
            tls=stranger_tls_context() if endpoint.tls else None,
        )
        observations = await probe_dimse(Target(endpoint.host, endpoint.port), options)
        reports.append(assess(observations))
    return reports


def self_check(running: RunningArchive) -> list[HostReport]:
    """Scan every endpoint once; never raises for what the endpoints answer.

    The probe's AE-title guesses count as failed logins from our own address; the gate
    forgives them afterwards so the self-check never locks local operators out.
    """
    try:
        return asyncio.run(_scan(running.endpoints))
    finally:
        for address in {"127.0.0.1", "::1", *(e.host for e in running.endpoints)}:
            running.gate.forgive(address)


def worst(reports: Sequence[HostReport]) -> Severity | None:
    found = [r.worst for r in reports if r.worst is not None]
    return max(found, key=lambda s: s.rank) if found else None
