"""nmap's dicom-ping against loopback targets, parsed from its XML output."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TypedDict

from ._errors import PeerError
from ._process import executable, require_loopback, run_tool


class DicomPing(TypedDict):
    """One port as nmap's dicom-ping saw it.

    dicom-ping sends one A-ASSOCIATE-RQ (calling ECHOSCU, called ANY-SCP). An A-ASSOCIATE-AC
    gives config "Any AET is accepted (Insecure)"; any A-ASSOCIATE-RJ gives "Called AET check
    enabled" (whatever the reject reason was); other answers leave the output empty.
    """

    state: str
    script_ran: bool
    dicom: bool
    config: str | None
    any_aet_accepted: bool
    called_aet_check: bool
    output: str


def _parse_dicom_ping(xml_text: str) -> dict[int, DicomPing]:
    results: dict[int, DicomPing] = {}
    for port in ET.fromstring(xml_text).iter("port"):
        state = port.find("state")
        script = port.find("script[@id='dicom-ping']")
        elems = {} if script is None else {e.get("key"): e.text or "" for e in script.iter("elem")}
        config = elems.get("config")
        results[int(port.get("portid", "0"))] = DicomPing(
            state=state.get("state", "") if state is not None else "",
            script_ran=script is not None,
            dicom="dicom" in elems,
            config=config,
            any_aet_accepted=config == "Any AET is accepted (Insecure)",
            called_aet_check=config == "Called AET check enabled",
            output=(script.get("output", "") if script is not None else "").strip(),
        )
    return results


def nmap_dicom_ping(
    targets: Sequence[tuple[str, int]], *, timeout: float = 120.0
) -> dict[tuple[str, int], DicomPing]:
    """Run nmap's dicom-ping against loopback targets, one nmap per host, parse its XML.

    `--script +dicom-ping`: the "+" forces the script on every port, because its portrule only
    fires on well-known DICOM ports (104, 2345, 2761, 2762, 4242, 11112) or a "dicom" service,
    and an ephemeral port is neither. TCP connect scan, no ping, no DNS.
    """
    nmap = executable("nmap")
    ports_by_host: dict[str, set[int]] = {}
    for host, port in targets:
        ports_by_host.setdefault(require_loopback(host), set()).add(port)
    results: dict[tuple[str, int], DicomPing] = {}
    for host, ports in ports_by_host.items():
        port_list = ",".join(str(p) for p in sorted(ports))
        argv = [str(nmap), "-n", "-Pn", "-sT", "-p", port_list, "--script", "+dicom-ping"]
        completed = run_tool([*argv, "-oX", "-", host], timeout=timeout)
        if completed.returncode != 0:
            raise PeerError(f"nmap exited {completed.returncode}: {completed.stderr[-2000:]}")
        parsed = _parse_dicom_ping(completed.stdout)
        for port in ports:
            if port not in parsed:
                raise PeerError(f"nmap reported nothing for {host}:{port}")
            results[(host, port)] = parsed[port]
    return results
