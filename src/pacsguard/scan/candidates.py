"""Candidates from files: plain target lists and the output of the port scanners people use.

masscan, ZMap and nmap do SYN discovery at line rate; pacsguard then probes what they found. Each
reader streams its file (a line, a JSON object or an XML `<host>` at a time, never the whole file)
and yields `Entry`s: a target string, the port the scanner saw open (None in a plain list or a
ZMap file without a port column) and where in the file it came from, for error messages.

| format | what it reads |
|---|---|
| `list` | targets, one or more a line, `#` comments (as on the command line) |
| `masscan-list` | masscan `-oL`: `open tcp 104 192.0.2.7 1700000000`, `#` comments |
| `masscan-json` | masscan `-oJ` (a JSON array; older versions' trailing comma too), `-oD` |
| `masscan-xml`, `nmap-xml` | masscan `-oX` and nmap `-oX`: open TCP ports of each `<host>` |
| `zmap-csv` | ZMap `-O csv`: a header row naming `saddr` (the responder) and optionally `sport` |

Scanner formats yield open TCP ports only (a masscan banner line, a closed port, a ZMap `rst`
reply or a UDP port is skipped). XML is parsed with `defusedxml` (no entity expansion, no
external entities): scanner output is untrusted input.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any, Final

from pacsguard.errors import TargetError


class InputFormat(StrEnum):
    AUTO = "auto"
    LIST = "list"
    MASSCAN_LIST = "masscan-list"
    MASSCAN_JSON = "masscan-json"
    MASSCAN_XML = "masscan-xml"
    NMAP_XML = "nmap-xml"
    ZMAP_CSV = "zmap-csv"

    @property
    def from_scanner(self) -> bool:
        """Entries are single IP addresses a scanner saw (not CIDRs or host names)."""
        return self not in (InputFormat.AUTO, InputFormat.LIST)


@dataclass(frozen=True, slots=True)
class Entry:
    """One candidate as the file states it."""

    host: str
    port: int | None
    #: Line (text formats), object or `<host>` number (JSON, XML) in the file, from 1.
    position: int


#: Bytes read to recognise a format.
SNIFF_BYTES: Final = 4096
#: Longest masscan JSON object accepted (one host with many ports fits easily).
MAX_JSON_OBJECT: Final = 1 << 20
_CHUNK: Final = 1 << 16
_MASSCAN_JSON_TRAILER = re.compile(r'\{\s*"?finished"?\s*:\s*\d+\s*\}')
_MASSCAN_LINE = re.compile(rb"^(open|closed|banner)\s+(tcp|udp|sctp|icmp)\s+\d+\s+\S+")


def sniff_format(head: bytes) -> InputFormat:
    """Recognise a format from a file's first bytes (`SNIFF_BYTES` is plenty)."""
    text = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if text.startswith(b"<"):
        return InputFormat.MASSCAN_XML if b'scanner="masscan"' in text else InputFormat.NMAP_XML
    if text.startswith((b"[", b"{")):
        return InputFormat.MASSCAN_JSON
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith(b"#masscan"):
            return InputFormat.MASSCAN_LIST
        if line.startswith(b"#"):
            continue
        if _MASSCAN_LINE.match(line):
            return InputFormat.MASSCAN_LIST
        if b"saddr" in [c.strip().strip(b'"') for c in line.split(b",")]:
            return InputFormat.ZMAP_CSV
        break
    return InputFormat.LIST


def read_entries(stream: IO[bytes], fmt: InputFormat, name: str) -> Iterator[Entry]:
    """Stream the entries of `stream` in format `fmt` (not AUTO); `name` goes into errors."""
    readers = {
        InputFormat.LIST: _read_list,
        InputFormat.MASSCAN_LIST: _read_masscan_list,
        InputFormat.MASSCAN_JSON: _read_masscan_json,
        InputFormat.MASSCAN_XML: _read_xml,
        InputFormat.NMAP_XML: _read_xml,
        InputFormat.ZMAP_CSV: _read_zmap_csv,
    }
    if fmt is InputFormat.AUTO:
        raise ValueError("resolve AUTO with sniff_format first")
    return readers[fmt](stream, name)


def _lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TargetError(f"{name}:{number}: not UTF-8 text") from None


def _read_list(stream: IO[bytes], name: str) -> Iterator[Entry]:
    for number, line in _lines(stream, name):
        for token in line.split("#", 1)[0].split():
            yield Entry(token, None, number)


def _read_masscan_list(stream: IO[bytes], name: str) -> Iterator[Entry]:
    for number, line in _lines(stream, name):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 4 or fields[0] not in ("open", "closed", "banner"):
            raise TargetError(
                f"{name}:{number}: not a masscan -oL line (expected e.g. "
                f"'open tcp 104 192.0.2.7 1700000000'); name the format with --input-format"
            )
        if fields[0] != "open" or fields[1] != "tcp":
            continue
        yield Entry(fields[3], _port(fields[2], name, number), number)


def _port(value: object, name: str, position: int) -> int:
    try:
        port = int(str(value))
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise TargetError(f"{name}:{position}: bad port {value!r}: ports are 1-65535")
    return port


def _read_masscan_json(stream: IO[bytes], name: str) -> Iterator[Entry]:
    """masscan -oJ is a JSON array written an object at a time; older versions wrote no
    brackets, a comma after every object and a `{finished: 1}` trailer. Decoding objects one by
    one, skipping the punctuation between them, reads all of these and -oD (NDJSON) too."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict")
    try:
        yield from _decode_masscan_json(text, name)
    finally:
        text.detach()  # the caller closes the file


def _decode_masscan_json(text: IO[str], name: str) -> Iterator[Entry]:
    decoder = json.JSONDecoder()
    buffer = ""
    line = 1
    number = 0
    eof = False
    while True:
        # Skip the array's punctuation between objects.
        stripped = buffer.lstrip(" \t\r\n,[]")
        line += buffer.count("\n", 0, len(buffer) - len(stripped))
        buffer = stripped
        if not buffer:
            if eof:
                return
            try:
                chunk = text.read(_CHUNK)
            except UnicodeDecodeError:
                raise TargetError(f"{name}: not UTF-8 text") from None
            eof = not chunk
            buffer = chunk
            continue
        trailer = _MASSCAN_JSON_TRAILER.match(buffer)
        if trailer:  # `{finished: 1}` (not JSON) ended older versions' output
            buffer = buffer[trailer.end() :]
            continue
        try:
            value, end = decoder.raw_decode(buffer)
        except json.JSONDecodeError as exc:
            if eof or len(buffer) > MAX_JSON_OBJECT:
                raise TargetError(
                    f"{name}:{line + exc.lineno - 1}: not masscan JSON ({exc.msg})"
                ) from None
            try:
                chunk = text.read(_CHUNK)
            except UnicodeDecodeError:
                raise TargetError(f"{name}: not UTF-8 text") from None
            eof = not chunk
            buffer += chunk
            continue
        number += 1
        line += buffer.count("\n", 0, end)
        buffer = buffer[end:]
        yield from _masscan_object(value, name, line)


def _masscan_object(value: Any, name: str, line: int) -> Iterator[Entry]:
    if not isinstance(value, dict):
        raise TargetError(f"{name}:{line}: expected a masscan JSON object, found {value!r:.40}")
    if "ip" not in value:  # e.g. the {"finished": 1} trailer of some versions
        return
    ports = value.get("ports", [])
    if not isinstance(value["ip"], str) or not isinstance(ports, list):
        raise TargetError(f"{name}:{line}: masscan object without an 'ip' string and 'ports' list")
    for port in ports:
        if not isinstance(port, dict):
            raise TargetError(f"{name}:{line}: a masscan 'ports' item is not an object")
        if port.get("proto") == "tcp" and port.get("status") == "open":
            yield Entry(value["ip"], _port(port.get("port"), name, line), line)


def _read_xml(stream: IO[bytes], name: str) -> Iterator[Entry]:
    """nmap's and masscan's -oX: `<host>` elements, each freed once read."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    number = 0
    root = None
    try:
        for event, element in iterparse(stream, events=("start", "end")):
            if event == "start":
                if root is None:
                    root = element
                    if root.tag != "nmaprun":
                        raise TargetError(
                            f"{name}: XML root is <{root.tag}>, not nmap's or masscan's <nmaprun>"
                        )
                continue
            if element.tag != "host":
                continue
            number += 1
            addresses = [
                a.get("addr", "")
                for a in element.iter("address")
                if a.get("addrtype") in ("ipv4", "ipv6")
            ]
            for port in element.iter("port"):
                state = port.find("state")
                if port.get("protocol") != "tcp" or state is None or state.get("state") != "open":
                    continue
                port_number = _port(port.get("portid"), name, number)
                for address in addresses:
                    yield Entry(address, port_number, number)
            if root is not None:
                root.clear()  # the host is consumed: keep memory flat
    except ParseError as exc:
        raise TargetError(f"{name}:{exc.position[0]}: not well-formed XML ({exc})") from None
    except DefusedXmlException as exc:
        raise TargetError(f"{name}: refused XML: {exc}") from None


def _read_zmap_csv(stream: IO[bytes], name: str) -> Iterator[Entry]:
    """ZMap -O csv: `saddr` is the host that answered, `sport` the port it answered from."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    try:
        yield from _decode_zmap_csv(text, name)
    finally:
        text.detach()  # the caller closes the file


def _decode_zmap_csv(text: IO[str], name: str) -> Iterator[Entry]:
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [c.strip() for c in header]
        if "saddr" not in columns:
            raise TargetError(
                f"{name}:1: a ZMap CSV file needs a header row naming 'saddr' "
                f"(zmap -O csv -f saddr,sport)"
            )
        saddr = columns.index("saddr")
        sport = columns.index("sport") if "sport" in columns else None
        success = columns.index("success") if "success" in columns else None
        classification = columns.index("classification") if "classification" in columns else None
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(columns):
                raise TargetError(
                    f"{name}:{line}: {len(row)} fields where the header names {len(columns)}"
                )
            if success is not None and row[success].strip() not in ("1", "true", "True"):
                continue
            if classification is not None and row[classification].strip() == "rst":
                continue
            port = _port(row[sport], name, line) if sport is not None else None
            yield Entry(row[saddr].strip(), port, line)
    except UnicodeDecodeError:
        raise TargetError(f"{name}: not UTF-8 text") from None
    except csv.Error as exc:
        raise TargetError(f"{name}:{reader.line_num}: not CSV ({exc})") from None
