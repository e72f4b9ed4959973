"""Targets and scope: what the user allowed, expanded lazily, exclusions always applied.

Accepted forms: `127.0.0.5`, `127.0.0.0/24`, `::1`, `localhost`, `host:port`, `[::1]:port`, and
files of such lines (`-iL`, `#` comments). `http://` or `https://` before any of them makes the
targets web targets (the HTTP tier); otherwise a port's transport comes from `WEB_PORTS` (e.g.
8042 is HTTP), and every other port is DIMSE. A scope larger than /16 worth of addresses is refused
unless the user confirms it (`allow_large`), so a typo such as `/8` for `/28` cannot launch a scan
of sixteen million hosts. Multicast, unspecified and broadcast addresses are never targets.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pacsguard.errors import ScopeError, TargetError
from pacsguard.scan.model import Target

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: DICOM (104), its registered alternative (11112), Orthanc's default (4242), DICOM over TLS (2762).
DEFAULT_PORTS: Final = (104, 11112, 4242, 2762)
#: Web ports scanned by default: Orthanc's REST API and DICOMweb (8042, Orthanc's default
#: "HttpPort") and dcm4chee-arc's web tier (8080, its WildFly HTTP listener). 80/443 answer on
#: every web server, so they are scanned only when named (`-p 80,443` or `https://host`).
DEFAULT_WEB_PORTS: Final = (8042, 8080)
#: Ports whose transport is HTTP(S) when no scheme is given; any other port is DIMSE.
WEB_PORTS: Final = {80: "http", 8042: "http", 8080: "http", 443: "https", 8443: "https"}
WEB_SCHEMES: Final = ("http", "https")
#: Largest number of addresses accepted without explicit confirmation (one /16).
MAX_ADDRESSES_UNCONFIRMED: Final = 65536


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One parsed target string: a network and, optionally, a port of its own."""

    network: IPNetwork
    port: int | None
    label: str
    #: "http" or "https" when the target was written as a URL; None: by port.
    scheme: str | None = None


def parse_ports(text: str) -> tuple[int, ...]:
    """`104,11112,4240-4242` -> ports, in order, without duplicates."""
    ports: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if lo > hi:
                    raise ValueError
                ports.extend(range(lo, hi + 1))
            else:
                ports.append(int(part))
        except ValueError:
            raise TargetError(f"bad port list {text!r}: use e.g. 104,11112 or 4240-4242") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise TargetError(f"bad port list {text!r}: ports are 1-65535")
    return tuple(dict.fromkeys(ports))


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise TargetError(f"bad target {text!r}: missing ']'")
        if rest.startswith(":"):
            return host, _port(text, rest[1:])
        if rest:
            raise TargetError(f"bad target {text!r}")
        return host, None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(text, port)
    return text, None


def _port(text: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise TargetError(f"bad port in target {text!r}") from None
    if not 0 < port < 65536:
        raise TargetError(f"bad port in target {text!r}: ports are 1-65535")
    return port


def _resolve(host: str, text: str) -> IPNetwork:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise TargetError(
            f"cannot resolve target {text!r}: not an IP address, CIDR or known host name"
        ) from None
    address = ipaddress.ip_address(str(infos[0][4][0]))
    return ipaddress.ip_network(address)


def parse_target(text: str) -> TargetSpec:
    """Parse one target string; raises TargetError with what to write instead."""
    text = text.strip()
    if not text:
        raise TargetError("empty target")
    label = text
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in WEB_SCHEMES:
            raise TargetError(f"bad target {label!r}: only http:// and https:// URLs are targets")
        text = rest.rstrip("/")
        _, slash, tail = text.partition("/")
        if slash and not re.fullmatch(r"\d{1,3}(:\d+)?", tail):  # only a prefix length
            raise TargetError(f"bad target {label!r}: give scheme, host and port, no path")
    host, port = _split_port(text)
    if sep and port is None:
        port = 443 if scheme == "https" else 80
    try:
        network: IPNetwork = ipaddress.ip_network(host, strict=False)
    except ValueError:
        if "/" in host:
            raise TargetError(f"bad CIDR {text!r}: use e.g. 127.0.0.0/24") from None
        network = _resolve(host, text)
    if network.is_multicast or network.is_unspecified:
        raise TargetError(f"target {text!r} is a multicast or unspecified address")
    return TargetSpec(network, port, label, scheme if sep else None)


def transport_for(port: int, scheme: str | None = None) -> str:
    """The transport of a target: its URL scheme if it had one, else by port."""
    return scheme or WEB_PORTS.get(port, "dimse")


def read_target_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TargetError(f"cannot read target file {path}: {exc.strerror}") from None
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        out.extend(line.split())
    return out


def _hosts(network: IPNetwork) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if network.num_addresses == 1:
        yield network.network_address
        return
    skip_ends = network.version == 4 and network.prefixlen < 31
    for address in network:
        if skip_ends and address in (network.network_address, network.broadcast_address):
            continue
        yield address


@dataclass(frozen=True)
class Scope:
    """The user's allowed targets and exclusions; iterating yields Targets lazily."""

    specs: tuple[TargetSpec, ...]
    ports: tuple[int, ...]
    excludes: tuple[IPNetwork, ...] = ()

    @property
    def address_count(self) -> int:
        return sum(s.network.num_addresses for s in self.specs)

    @property
    def target_count(self) -> int:
        """Upper bound on targets (before exclusions)."""
        return sum(
            s.network.num_addresses * (1 if s.port is not None else len(self.ports))
            for s in self.specs
        )

    def excluded(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address.version == n.version and address in n for n in self.excludes)

    def __iter__(self) -> Iterator[Target]:
        seen_single: set[tuple[str, int]] = set()
        for spec in self.specs:
            ports = (spec.port,) if spec.port is not None else self.ports
            for address in _hosts(spec.network):
                if self.excluded(address):
                    continue
                for port in ports:
                    if spec.network.num_addresses == 1:
                        key = (str(address), port)
                        if key in seen_single:
                            continue
                        seen_single.add(key)
                    yield Target(str(address), port, transport_for(port, spec.scheme))


def build_scope(
    targets: Sequence[str],
    *,
    ports: Sequence[int] = DEFAULT_PORTS + DEFAULT_WEB_PORTS,
    target_files: Iterable[Path] = (),
    excludes: Sequence[str] = (),
    exclude_files: Iterable[Path] = (),
    allow_large: bool = False,
) -> Scope:
    """Parse everything the user gave; refuse oversize scopes unless confirmed."""
    texts = list(targets)
    for path in target_files:
        texts.extend(read_target_file(path))
    if not texts:
        raise TargetError("no targets given: name at least one address, CIDR or host")
    specs = tuple(parse_target(t) for t in texts)
    exclude_texts = list(excludes)
    for path in exclude_files:
        exclude_texts.extend(read_target_file(path))
    exclude_nets = tuple(parse_target(t).network for t in exclude_texts)
    scope = Scope(specs=specs, ports=tuple(ports), excludes=exclude_nets)
    if scope.address_count > MAX_ADDRESSES_UNCONFIRMED and not allow_large:
        largest = max(specs, key=lambda s: s.network.num_addresses)
        raise ScopeError(
            f"scope covers {scope.address_count:,} addresses (largest: {largest.label}), more "
            f"than a /16; check for a typo, or confirm with --allow-large-scope"
        )
    return scope
