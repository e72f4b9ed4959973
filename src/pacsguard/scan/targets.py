"""Targets and scope: what the user allowed, expanded lazily, exclusions always applied.

Accepted forms: `127.0.0.5`, `127.0.0.0/24`, `::1`, `localhost`, `host:port`, `[::1]:port`, and
files (`-iL`): plain lists of such targets or port scanners' output (masscan, ZMap, nmap; see
`pacsguard.scan.candidates`), where each candidate keeps the port the scanner found open.
`http://` or `https://` before a target makes it a web target (the HTTP tier); otherwise a
port's transport comes from `WEB_PORTS` (e.g. 8042 is HTTP), and every other port is DIMSE.

A file is read twice and never held in memory: once when the scope is built, to validate every
entry and count addresses, and again, streaming, while the scan runs. So a bad line is reported
before any probe is sent. A scope larger than /16 worth of addresses (for scanner output:
distinct addresses) is refused unless the user confirms it (`allow_large`), so a typo such as
`/8` for `/28` cannot launch a scan of sixteen million hosts. Multicast, unspecified and
broadcast addresses are never targets.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from pacsguard.errors import ScopeError, TargetError
from pacsguard.scan.candidates import SNIFF_BYTES, Entry, InputFormat, read_entries, sniff_format
from pacsguard.scan.model import Target

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: A candidate: one address (scanner output, a single-address list entry) or a network, with
#: its own port or None (the scope's ports), and its URL scheme or None (transport by port).
Candidate = tuple[Address | IPNetwork, int | None, str | None]

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
#: Recent single-address targets remembered to skip repeats (scanner retries) while streaming.
DEDUPLICATION_WINDOW: Final = 1 << 16


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
    """The target strings of a plain list (exclusion files): a line at a time, `#` comments."""
    try:
        with path.open("rb") as stream:
            return [e.host for e in read_entries(stream, InputFormat.LIST, str(path))]
    except OSError as exc:
        raise TargetError(f"cannot read target file {path}: {exc.strerror}") from None


def _scanner_address(text: str, where: str) -> Address:
    """An IP address literal, parsed fast (inet_pton): scanner files hold millions of them."""
    try:
        if ":" in text:
            address: Address = ipaddress.IPv6Address(text)
            bad = address.is_multicast or address.is_unspecified
        else:
            number = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
            address = ipaddress.IPv4Address(number)
            bad = number >> 28 == 0xE or number == 0
    except (OSError, ValueError):
        raise TargetError(
            f"{where}: {text!r:.60} is not an IP address (is --input-format right?)"
        ) from None
    if bad:
        raise TargetError(f"{where}: {address} is a multicast or unspecified address")
    return address


def _entry_candidate(entry: Entry, fmt: InputFormat, name: str) -> Candidate:
    if fmt.from_scanner:
        return _scanner_address(entry.host, f"{name}:{entry.position}"), entry.port, None
    try:
        spec = parse_target(entry.host)
    except TargetError as exc:
        raise TargetError(f"{name}:{entry.position}: {exc}") from None
    return _spec_candidate(spec)


def _spec_candidate(spec: TargetSpec) -> Candidate:
    network = spec.network
    single = network.num_addresses == 1
    return (network.network_address if single else network), spec.port, spec.scheme


class _AddressTally:
    """Counts addresses for the size guard: single addresses once each (up to the limit, so
    memory stays bounded), networks by their size."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._single: set[Address] = set()
        self._networks = 0
        self.capped = False

    def add(self, target: Address | IPNetwork) -> None:
        if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network):
            self._networks += target.num_addresses
        elif not self.capped:
            self._single.add(target)
            self.capped = len(self._single) > self._limit

    @property
    def count(self) -> int:
        """Distinct addresses; only a lower bound once `capped`."""
        return len(self._single) + self._networks


@dataclass(frozen=True, slots=True)
class CandidateFile:
    """A file of candidates (`-iL`), read again, streaming, each time the scope is iterated."""

    path: Path
    format: InputFormat
    #: Entries found when the scope was built (before exclusions).
    entries: int
    #: Upper bound on the targets they make (an entry without a port takes every scope port).
    targets: int
    #: Size and modification time when counted: a file that changes is refused on re-reading.
    signature: tuple[int, int]

    def candidates(self) -> Iterator[Candidate]:
        name = str(self.path)
        try:
            with self.path.open("rb") as stream:
                if _signature(stream) != self.signature:
                    raise TargetError(
                        f"{name} changed after it was counted; scan a finished copy of the file"
                    )
                for entry in read_entries(stream, self.format, name):
                    yield _entry_candidate(entry, self.format, name)
        except OSError as exc:
            raise TargetError(f"cannot read target file {name}: {exc.strerror}") from None


def _signature(stream: IO[bytes]) -> tuple[int, int]:
    stat = os.fstat(stream.fileno())
    return stat.st_size, stat.st_mtime_ns


def _read_candidate_file(
    path: Path, fmt: InputFormat, ports: int, tally: _AddressTally
) -> CandidateFile:
    """First pass over a file: detect its format, validate every entry, count."""
    name = str(path)
    entries = targets = 0
    try:
        with path.open("rb") as stream:
            signature = _signature(stream)
            if fmt is InputFormat.AUTO:
                fmt = sniff_format(stream.read(SNIFF_BYTES))
                stream.seek(0)
            for entry in read_entries(stream, fmt, name):
                target, port, _ = _entry_candidate(entry, fmt, name)
                tally.add(target)
                entries += 1
                size = 1 if isinstance(target, Address) else target.num_addresses
                targets += size if port is not None else size * ports
    except OSError as exc:
        raise TargetError(f"cannot read target file {path}: {exc.strerror}") from None
    return CandidateFile(path, fmt, entries, targets, signature)


class _RecentSet:
    """Membership of the last `size` addresses and ports added: skips repeated scanner hits
    (masscan retries, ZMap repeats) in bounded memory (about 100 bytes a key)."""

    def __init__(self, size: int) -> None:
        self._keys: set[int] = set()
        self._order: collections.deque[int] = collections.deque(maxlen=size)

    def add(self, address: Address, port: int) -> bool:
        """Add the pair; False if it was already there."""
        key = (int(address) << 17) | ((address.version == 6) << 16) | port
        if key in self._keys:
            return False
        if len(self._order) == self._order.maxlen:
            self._keys.discard(self._order[0])  # appending below drops it from the deque
        self._order.append(key)
        self._keys.add(key)
        return True


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
    files: tuple[CandidateFile, ...] = ()
    #: Distinct addresses in `files` (a lower bound past MAX_ADDRESSES_UNCONFIRMED).
    file_addresses: int = 0

    @property
    def address_count(self) -> int:
        return sum(s.network.num_addresses for s in self.specs) + self.file_addresses

    @property
    def target_count(self) -> int:
        """Upper bound on targets (before exclusions)."""
        return sum(
            s.network.num_addresses * (1 if s.port is not None else len(self.ports))
            for s in self.specs
        ) + sum(f.targets for f in self.files)

    def excluded(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address.version == n.version and address in n for n in self.excludes)

    def __iter__(self) -> Iterator[Target]:
        seen_single = _RecentSet(DEDUPLICATION_WINDOW)
        for target, own_port, scheme in self._candidates():
            ports = (own_port,) if own_port is not None else self.ports
            single = isinstance(target, Address)
            addresses = (target,) if isinstance(target, Address) else _hosts(target)
            for address in addresses:
                if self.excludes and self.excluded(address):
                    continue
                for port in ports:
                    if single and not seen_single.add(address, port):
                        continue
                    yield Target(str(address), port, transport_for(port, scheme))

    def _candidates(self) -> Iterator[Candidate]:
        for spec in self.specs:
            yield _spec_candidate(spec)
        for source in self.files:
            yield from source.candidates()


def build_scope(
    targets: Sequence[str],
    *,
    ports: Sequence[int] = DEFAULT_PORTS + DEFAULT_WEB_PORTS,
    target_files: Iterable[Path] = (),
    input_format: InputFormat = InputFormat.AUTO,
    excludes: Sequence[str] = (),
    exclude_files: Iterable[Path] = (),
    allow_large: bool = False,
) -> Scope:
    """Parse everything the user gave (files in a first, counting pass); refuse oversize scopes
    unless confirmed, before anything is probed."""
    specs = tuple(parse_target(t) for t in targets)
    tally = _AddressTally(MAX_ADDRESSES_UNCONFIRMED)
    files = tuple(
        _read_candidate_file(path, input_format, len(ports), tally) for path in target_files
    )
    if not specs and not any(f.entries for f in files):
        if files:
            names = ", ".join(f"{f.path} ({f.format.value})" for f in files)
            raise TargetError(f"no targets: {names} name no target (or no open TCP port)")
        raise TargetError("no targets given: name at least one address, CIDR or host")
    exclude_texts = list(excludes)
    for path in exclude_files:
        exclude_texts.extend(read_target_file(path))
    exclude_nets = tuple(parse_target(t).network for t in exclude_texts)
    scope = Scope(
        specs=specs,
        ports=tuple(ports),
        excludes=exclude_nets,
        files=files,
        file_addresses=tally.count,
    )
    if scope.address_count > MAX_ADDRESSES_UNCONFIRMED and not allow_large:
        biggest = max(specs, key=lambda s: s.network.num_addresses, default=None)
        if biggest is not None and biggest.network.num_addresses > MAX_ADDRESSES_UNCONFIRMED:
            largest = biggest.label
        else:
            largest = ", ".join(str(f.path) for f in files) or str(biggest and biggest.label)
        covers = (
            f"more than {MAX_ADDRESSES_UNCONFIRMED:,} distinct"
            if tally.capped
            else f"{scope.address_count:,}"
        )
        raise ScopeError(
            f"scope covers {covers} addresses (largest: {largest}), more "
            f"than a /16; check for a typo, or confirm with --allow-large-scope"
        )
    return scope
