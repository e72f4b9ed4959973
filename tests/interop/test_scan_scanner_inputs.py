"""Real masscan, ZMap and nmap find lab hosts; `pacsguard scan -iL` probes what they found.

Everything happens inside two network namespaces the test creates and deletes: a scanner
namespace and a lab namespace joined by one veth pair, with addresses from TEST-NET-1
(192.0.2.0/24, RFC 5737) that exist only inside them. The lab listens on the lab namespace's own
loopback (it binds nothing else); iptables DNAT in that namespace forwards its veth addresses
there. masscan and ZMap run in the scanner namespace with the veth as their interface and the
lab side's MAC as their gateway, so their raw packets have nowhere else to go; nmap and pacsguard
run there too.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pacsguard.report.jsonl import load_schema

from .conftest import require_tools

pytestmark = pytest.mark.interop

SCANNER_ADDRESS = "192.0.2.1"
LAB_ADDRESSES = ("192.0.2.2", "192.0.2.3")
#: On the lab's veth but forwarded nowhere: its kernel answers SYNs with RST.
NOTHING_ADDRESS = "192.0.2.4"
#: Not a default DICOM port: a probe on it can only come from the scanner's output.
LAB_PORT = 4243
CLOSED_PORT = 104
PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))


def _run(argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _check(command: str) -> None:
    """Run a command of plain words (names here never hold spaces); raise if it fails."""
    done = _run(command.split())
    if done.returncode:
        raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr.strip()}")


@dataclass
class LabNamespaces:
    scanner: str
    lab: str
    scanner_link: str
    lab_mac: str

    def exec(self, namespace: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]


@pytest.fixture
def namespaces() -> Iterator[LabNamespaces]:
    """Two fresh namespaces and a veth pair; skipped (with the reason) where netns is denied."""
    require_tools("ip", "iptables", "masscan", "zmap", "nmap")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    token = secrets.token_hex(3)
    scanner, lab = f"pgscan-{token}", f"pglab-{token}"
    scanner_link, lab_link = f"pgs-{token}", f"pgl-{token}"
    denied = _run(["ip", "netns", "add", scanner])
    if denied.returncode:
        message = f"network namespaces are not permitted here: {denied.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        _check(f"ip netns add {lab}")
        _check(
            f"ip link add {scanner_link} netns {scanner} type veth peer name {lab_link} netns {lab}"
        )
        _check(f"ip -n {scanner} addr add {SCANNER_ADDRESS}/24 dev {scanner_link}")
        for address in (*LAB_ADDRESSES, NOTHING_ADDRESS):
            _check(f"ip -n {lab} addr add {address}/24 dev {lab_link}")
        for namespace, link in ((scanner, scanner_link), (lab, lab_link)):
            _check(f"ip -n {namespace} link set lo up")
            _check(f"ip -n {namespace} link set {link} up")
        # Accept veth traffic for the lab namespace's loopback listeners (its own sysctls).
        _check(
            f"ip netns exec {lab} sysctl -qw net.ipv4.conf.all.route_localnet=1 "
            f"net.ipv4.conf.{lab_link}.route_localnet=1"
        )
        for index, address in enumerate(LAB_ADDRESSES, start=1):
            _check(
                f"ip netns exec {lab} iptables -t nat -A PREROUTING -i {lab_link} -d {address} "
                f"-p tcp -j DNAT --to-destination 127.0.0.{index}"
            )
        links = json.loads(_run(["ip", "-n", lab, "-j", "link", "show", lab_link]).stdout)
        yield LabNamespaces(scanner, lab, scanner_link, links[0]["address"])
    finally:
        for namespace in (scanner, lab):  # deleting a namespace removes its veth end and rules
            _run(["ip", "netns", "del", namespace])


@pytest.fixture
def lab_in_namespace(namespaces: LabNamespaces, tmp_path: Path) -> Iterator[LabNamespaces]:
    """`pacsguard lab serve`: two open PACS on the lab namespace's 127.0.0.1 and 127.0.0.2."""
    truth = tmp_path / "truth.json"
    log = (tmp_path / "lab.log").open("wb")
    argv = [PACSGUARD, "lab", "serve", "--hosts", "2"]
    argv += ["--port", str(LAB_PORT), "--base-address", "127.0.0.1", "--profile", "open"]
    argv += ["--truth", str(truth)]
    process = subprocess.Popen(
        namespaces.exec(namespaces.lab, argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not truth.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"the lab did not start: {(tmp_path / 'lab.log').read_text()}")
            time.sleep(0.2)
        yield namespaces
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def run_masscan(ns: LabNamespaces, out: Path) -> None:
    """masscan confined to the veth pair: its adapter, its address, the lab side's MAC; the
    result in masscan's binary format, which `--readscan` turns into its other formats."""
    argv = ["masscan", f"{LAB_ADDRESSES[0]}-{LAB_ADDRESSES[-1]}"]
    argv += ["-p", f"{CLOSED_PORT},{LAB_PORT}", "--adapter", ns.scanner_link]
    argv += ["--adapter-ip", SCANNER_ADDRESS, "--router-mac", ns.lab_mac]
    argv += ["--rate", "100", "--wait", "2", "-oB", str(out)]
    done = _run(ns.exec(ns.scanner, argv), timeout=120)
    assert done.returncode == 0, done.stderr


def masscan_convert(binary: Path, option: str, out: Path) -> str:
    """masscan's own -oL / -oJ / -oX writer, fed from its binary output (no network)."""
    done = _run(["masscan", "--readscan", str(binary), option, str(out)])
    assert done.returncode == 0, done.stderr
    return out.read_text()


def pacsguard_scan(ns: LabNamespaces, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    """`pacsguard scan` inside the scanner namespace; its JSON Lines records."""
    records = tmp_path / f"records-{secrets.token_hex(3)}.jsonl"
    argv = [PACSGUARD, "scan", *args, "-o", str(records)]
    argv += ["--connect-timeout", "5", "--read-timeout", "10"]
    done = subprocess.run(
        ns.exec(ns.scanner, argv),
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr  # 1: the open lab hosts have findings
    schema = load_schema()
    found = [json.loads(line) for line in records.read_text().splitlines()]
    for record in found:
        jsonschema.validate(record, schema)
    return sorted(found, key=lambda r: (r["host"], r["port"]))


def assert_lab_hosts_probed(records: list[dict[str, Any]], hosts: Sequence[str]) -> None:
    assert [(r["host"], r["port"]) for r in records] == [(h, LAB_PORT) for h in hosts]
    for record in records:
        assert record["dicom"] is True
        assert record["association"]["status"] == "accepted"
        assert record["association"]["any_called_ae_accepted"] is True


def test_masscan_finds_lab_hosts_and_pacsguard_probes_them(
    lab_in_namespace: LabNamespaces, tmp_path: Path
) -> None:
    ns = lab_in_namespace
    binary = tmp_path / "masscan.bin"
    run_masscan(ns, binary)
    listing = masscan_convert(binary, "-oL", tmp_path / "masscan.txt")
    assert listing.startswith("#masscan")
    hits = sorted(line.split()[2:4] for line in listing.splitlines() if line.startswith("open"))
    assert hits == [[str(LAB_PORT), a] for a in LAB_ADDRESSES]  # 104 is closed: not listed

    # -p names only the closed port: the probes use the port masscan found instead.
    records = pacsguard_scan(ns, tmp_path, "-iL", str(tmp_path / "masscan.txt"), "-p", "104")
    assert_lab_hosts_probed(records, LAB_ADDRESSES)

    # The same hits as -oJ and -oX; exclusions apply to every format.
    masscan_convert(binary, "-oJ", tmp_path / "masscan.json")
    masscan_convert(binary, "-oX", tmp_path / "masscan.xml")
    for name in ("masscan.json", "masscan.xml"):
        records = pacsguard_scan(
            ns, tmp_path, "-iL", str(tmp_path / name), "--exclude", LAB_ADDRESSES[1]
        )
        assert_lab_hosts_probed(records, LAB_ADDRESSES[:1])


def test_nmap_xml_from_a_real_nmap_run(lab_in_namespace: LabNamespaces, tmp_path: Path) -> None:
    ns = lab_in_namespace
    out = tmp_path / "nmap.xml"
    argv = ["nmap", "-sT", "-Pn", "-n", "-p", f"{CLOSED_PORT},{LAB_PORT}", "-oX", str(out)]
    done = _run(ns.exec(ns.scanner, [*argv, *LAB_ADDRESSES]), timeout=120)
    assert done.returncode == 0, done.stderr
    records = pacsguard_scan(ns, tmp_path, "-iL", str(out), "--input-format", "nmap-xml")
    assert_lab_hosts_probed(records, LAB_ADDRESSES)


def test_zmap_csv_from_a_real_zmap_run(lab_in_namespace: LabNamespaces, tmp_path: Path) -> None:
    ns = lab_in_namespace
    out = tmp_path / "zmap.csv"
    blocklist = tmp_path / "blocklist.conf"  # the default one holds TEST-NET-1: scan it here
    blocklist.write_text("")
    argv = ["zmap", "-p", str(LAB_PORT), "-i", ns.scanner_link, "-S", SCANNER_ADDRESS]
    argv += ["-G", ns.lab_mac, "-b", str(blocklist), "-r", "100", "-c", "2", "-O", "csv"]
    argv += ["-f", "saddr,sport,classification,success", "-o", str(out)]
    argv += [f"{LAB_ADDRESSES[0]}/31", f"{NOTHING_ADDRESS}/32"]
    done = _run(ns.exec(ns.scanner, argv), timeout=120)
    assert done.returncode == 0, done.stderr
    rows = sorted(out.read_text().splitlines()[1:])
    assert rows == [
        f"{LAB_ADDRESSES[0]},{LAB_PORT},synack,1",
        f"{LAB_ADDRESSES[1]},{LAB_PORT},synack,1",
        f"{NOTHING_ADDRESS},{LAB_PORT},rst,0",
    ]
    records = pacsguard_scan(ns, tmp_path, "-iL", str(out))  # the RST row is no candidate
    assert_lab_hosts_probed(records, LAB_ADDRESSES)
