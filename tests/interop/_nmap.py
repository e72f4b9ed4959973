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


# --- TLS: ssl-enum-ciphers and ssl-cert -------------------------------------------------------


class NmapTls(TypedDict):
    """One TLS port as nmap's ssl-enum-ciphers (versions) and ssl-cert (certificate) saw it."""

    versions: list[str]  # "1.0" ... "1.3", as pacsguard names them
    key_type: str | None
    key_bits: int | None
    sig_algo: str | None  # e.g. sha1WithRSAEncryption, ecdsa-with-SHA256
    not_after: str | None  # ISO 8601 without zone (UTC)
    subject: dict[str, str]
    issuer: dict[str, str]


_NMAP_TLS_VERSIONS = {"TLSv1.0": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}


def _elems(table: ET.Element | None) -> dict[str, str]:
    if table is None:
        return {}
    return {e.get("key", ""): e.text or "" for e in table.findall("elem")}


def _parse_tls(xml_text: str) -> dict[int, NmapTls]:
    results: dict[int, NmapTls] = {}
    for port in ET.fromstring(xml_text).iter("port"):
        ciphers = port.find("script[@id='ssl-enum-ciphers']")
        cert = port.find("script[@id='ssl-cert']")
        versions = [] if ciphers is None else [t.get("key", "") for t in ciphers.findall("table")]
        pubkey = _elems(None if cert is None else cert.find("table[@key='pubkey']"))
        validity = _elems(None if cert is None else cert.find("table[@key='validity']"))
        top = _elems(cert)
        bits = pubkey.get("bits")
        results[int(port.get("portid", "0"))] = NmapTls(
            versions=[_NMAP_TLS_VERSIONS.get(v, v) for v in versions],
            key_type=pubkey.get("type"),
            key_bits=int(bits) if bits else None,
            sig_algo=top.get("sig_algo"),
            not_after=validity.get("notAfter"),
            subject=_elems(None if cert is None else cert.find("table[@key='subject']")),
            issuer=_elems(None if cert is None else cert.find("table[@key='issuer']")),
        )
    return results


def nmap_tls(host: str, ports: Sequence[int], *, timeout: float = 300.0) -> dict[int, NmapTls]:
    """nmap's ssl-enum-ciphers and ssl-cert on loopback ports ("+" forces them on ports nmap
    would not think of as TLS). TCP connect scan, no ping, no DNS."""
    nmap = executable("nmap")
    argv = [str(nmap), "-n", "-Pn", "-sT", "-p", ",".join(str(p) for p in sorted(ports))]
    argv += ["--script", "+ssl-enum-ciphers,+ssl-cert", "-oX", "-", require_loopback(host)]
    completed = run_tool(argv, timeout=timeout)
    if completed.returncode != 0:
        raise PeerError(f"nmap exited {completed.returncode}: {completed.stderr[-2000:]}")
    parsed = _parse_tls(completed.stdout)
    missing = [p for p in ports if p not in parsed]
    if missing:
        raise PeerError(f"nmap reported nothing for {host}:{missing}")
    return parsed
