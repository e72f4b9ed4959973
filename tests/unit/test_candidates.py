"""Candidates from port scanners' output: each format as its tool documents it, and bad input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pacsguard.errors import ScopeError, TargetError
from pacsguard.scan.candidates import Entry, InputFormat, read_entries, sniff_format
from pacsguard.scan.model import Target
from pacsguard.scan.targets import build_scope

# masscan 1.3 -oL (out-unicornscan.c style "list"): status, protocol, port, address, timestamp.
MASSCAN_LIST = """#masscan
open tcp 4242 127.0.0.7 1700000000
banner tcp 4242 127.0.0.7 1700000001 http Server: test
open udp 161 127.0.0.8 1700000000
closed tcp 105 127.0.0.8 1700000000
open tcp 104 127.0.0.8 1700000002
# end
"""

# masscan 1.3 -oJ: "[", one object a record, "," on its own line between them, "]".
MASSCAN_JSON = """[
{   "ip": "127.0.0.7",   "timestamp": "1700000000", "ports": [ {"port": 4242, "proto": "tcp", "status": "open", "reason": "syn-ack", "ttl": 64} ] }
,
{   "ip": "127.0.0.7",   "timestamp": "1700000001", "ports": [ {"port": 4242, "proto": "tcp", "service": {"name": "http", "banner": "x"} } ] }
,
{   "ip": "127.0.0.8",   "timestamp": "1700000002", "ports": [ {"port": 104, "proto": "tcp", "status": "open", "reason": "syn-ack", "ttl": 64} ] }
]
"""  # noqa: E501

# Older masscan -oJ: no brackets, a comma after every object, a `{finished: 1}` trailer.
MASSCAN_JSON_OLD = """{   "ip": "127.0.0.7",   "ports": [ {"port": 4242, "proto": "tcp", "status": "open", "reason": "syn-ack", "ttl": 64} ] },
{   "ip": "127.0.0.8",   "ports": [ {"port": 104, "proto": "tcp", "status": "open", "reason": "syn-ack", "ttl": 64} ] },
{finished: 1}
"""  # noqa: E501

# masscan -oD (NDJSON, one object a line).
MASSCAN_NDJSON = """{"ip": "127.0.0.7", "timestamp": "1700000000", "ports": [{"port": 4242, "proto": "tcp", "status": "open"}]}
{"ip": "127.0.0.8", "timestamp": "1700000000", "ports": [{"port": 104, "proto": "tcp", "status": "open"}]}
"""  # noqa: E501

MASSCAN_XML = """<?xml version="1.0"?>
<!-- masscan v1.0 scan -->
<nmaprun scanner="masscan" start="1700000000" version="1.0-BETA"  xmloutputversion="1.03">
<scaninfo type="syn" protocol="tcp" />
<host endtime="1700000000"><address addr="127.0.0.7" addrtype="ipv4"/><ports><port protocol="tcp" portid="4242"><state state="open" reason="syn-ack" reason_ttl="64"/></port></ports></host>
<host endtime="1700000002"><address addr="127.0.0.8" addrtype="ipv4"/><ports><port protocol="tcp" portid="104"><state state="open" reason="syn-ack" reason_ttl="64"/></port></ports></host>
<runstats>
<finished time="1700000010" timestr="2023-11-14 22:13:30" elapsed="10" />
<hosts up="2" down="0" total="2" />
</runstats>
</nmaprun>
"""  # noqa: E501

# nmap -oX: a DOCTYPE, a MAC address, closed/filtered ports and a host that is down.
NMAP_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE nmaprun>
<?xml-stylesheet href="file:///usr/bin/../share/nmap/nmap.xsl" type="text/xsl"?>
<nmaprun scanner="nmap" args="nmap -sT -p 104,4242 -oX - 127.0.0.7-9" start="1700000000" version="7.93" xmloutputversion="1.05">
<scaninfo type="connect" protocol="tcp" numservices="2" services="104,4242"/>
<host starttime="1700000000" endtime="1700000001"><status state="up" reason="conn-refused" reason_ttl="0"/>
<address addr="127.0.0.7" addrtype="ipv4"/>
<address addr="02:00:00:00:00:07" addrtype="mac"/>
<hostnames><hostname name="lab7" type="PTR"/></hostnames>
<ports><port protocol="tcp" portid="104"><state state="closed" reason="conn-refused" reason_ttl="0"/><service name="dicom" method="table" conf="3"/></port>
<port protocol="tcp" portid="4242"><state state="open" reason="syn-ack" reason_ttl="0"/><service name="vrml-multi-use" method="table" conf="3"/></port>
</ports>
<times srtt="50" rttvar="3775" to="100000"/>
</host>
<host starttime="1700000000" endtime="1700000001"><status state="up" reason="conn-refused" reason_ttl="0"/>
<address addr="127.0.0.8" addrtype="ipv4"/>
<ports><port protocol="tcp" portid="104"><state state="open" reason="syn-ack" reason_ttl="0"/></port>
<port protocol="tcp" portid="4242"><state state="filtered" reason="no-response" reason_ttl="0"/></port>
</ports>
</host>
<host><status state="down" reason="no-response" reason_ttl="0"/><address addr="127.0.0.9" addrtype="ipv4"/></host>
<runstats><finished time="1700000001" elapsed="1.00" exit="success"/><hosts up="2" down="1" total="3"/></runstats>
</nmaprun>
"""  # noqa: E501

# ZMap -O csv -f saddr,sport,classification,success: saddr answered from sport.
ZMAP_CSV = """saddr,sport,classification,success
127.0.0.7,4242,synack,1
127.0.0.9,4242,rst,0
127.0.0.8,104,synack,1
"""

EXPECTED = [("127.0.0.7", 4242), ("127.0.0.8", 104)]


def entries(text: str, fmt: InputFormat) -> list[tuple[str, int | None]]:
    found = read_entries(io.BytesIO(text.encode()), fmt, "test")
    return [(e.host, e.port) for e in found]


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        (MASSCAN_LIST, InputFormat.MASSCAN_LIST),
        (MASSCAN_JSON, InputFormat.MASSCAN_JSON),
        (MASSCAN_JSON_OLD, InputFormat.MASSCAN_JSON),
        (MASSCAN_NDJSON, InputFormat.MASSCAN_JSON),
        (MASSCAN_XML, InputFormat.MASSCAN_XML),
        (NMAP_XML, InputFormat.NMAP_XML),
        (ZMAP_CSV, InputFormat.ZMAP_CSV),
    ],
)
def test_each_format_is_recognised_and_keeps_open_tcp_ports(text: str, fmt: InputFormat) -> None:
    assert sniff_format(text.encode()[:4096]) is fmt
    assert entries(text, fmt) == EXPECTED


def test_plain_lists_and_single_column_zmap() -> None:
    assert sniff_format(b"# lab hosts\n127.0.0.1 127.0.0.2:104\n") is InputFormat.LIST
    assert sniff_format(b"127.0.0.0/24\n") is InputFormat.LIST
    assert sniff_format(b"\xef\xbb\xbf#masscan\n") is InputFormat.MASSCAN_LIST
    assert sniff_format(b"open tcp 104 127.0.0.1 1700000000\n") is InputFormat.MASSCAN_LIST
    assert entries("saddr\n127.0.0.7\n", InputFormat.ZMAP_CSV) == [("127.0.0.7", None)]
    assert sniff_format(b"saddr\n127.0.0.7\n") is InputFormat.ZMAP_CSV
    assert entries("127.0.0.1 # x\n127.0.0.2:104\n", InputFormat.LIST) == [
        ("127.0.0.1", None),
        ("127.0.0.2:104", None),
    ]


def test_masscan_json_objects_across_read_chunks() -> None:
    """Objects are decoded one by one from 64 KiB reads: many cross a chunk boundary."""
    objects = [
        f'{{   "ip": "127.1.{i // 250}.{i % 250 + 1}",   "timestamp": "1700000000", "ports": '
        f'[ {{"port": {1000 + i % 7}, "proto": "tcp", "status": "open", "reason": "syn-ack", '
        f'"ttl": 64}} ] }}'
        for i in range(5000)
    ]
    text = "[\n" + "\n,\n".join(objects) + "\n]\n"
    assert len(text) > 5 * 65536
    found = list(read_entries(io.BytesIO(text.encode()), InputFormat.MASSCAN_JSON, "big"))
    assert len(found) == 5000
    assert found[-1] == Entry("127.1.19.250", 1000 + 4999 % 7, found[-1].position)
    # Positions are lines: the last object is on the file's second-to-last line.
    assert found[-1].position == text.count("\n") - 1


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ("#masscan\nopen tcp 104\n", InputFormat.MASSCAN_LIST, r"test:2: not a masscan -oL"),
        ("open tcp 0 127.0.0.1 1\n", InputFormat.MASSCAN_LIST, r"test:1: bad port"),
        ('[\n{"ip": "127.0.0.1", "ports": [\n', InputFormat.MASSCAN_JSON, r"test:3: not masscan"),
        ("[1, 2]", InputFormat.MASSCAN_JSON, r"expected a masscan JSON object"),
        ('{"ip": 7, "ports": []}', InputFormat.MASSCAN_JSON, r"without an 'ip' string"),
        ('<nmaprun><host><address addr="1"', InputFormat.NMAP_XML, r"not well-formed XML"),
        ("<html></html>", InputFormat.NMAP_XML, r"not nmap's or masscan's"),
        ("daddr,dport\n1,2\n", InputFormat.ZMAP_CSV, r"test:1: .*'saddr'"),
        ("saddr,sport\n127.0.0.1\n", InputFormat.ZMAP_CSV, r"test:2: 1 fields"),
        ("saddr,sport\n127.0.0.1,http\n", InputFormat.ZMAP_CSV, r"test:2: bad port"),
    ],
)
def test_bad_input_gets_a_clear_error_with_its_place(
    text: str, fmt: InputFormat, message: str
) -> None:
    with pytest.raises(TargetError, match=message):
        entries(text, fmt)


def test_xml_entities_are_refused() -> None:
    """A billion-laughs document is untrusted input, not something to expand."""
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE nmaprun [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><nmaprun>&b;</nmaprun>'
    )
    with pytest.raises(TargetError, match="refused XML"):
        entries(bomb, InputFormat.NMAP_XML)


def test_not_utf8_is_a_clear_error() -> None:
    stream = io.BytesIO(b"#masscan\nopen tcp 104 \xff 1\n")
    with pytest.raises(TargetError, match="test:2: not UTF-8"):
        list(read_entries(stream, InputFormat.MASSCAN_LIST, "test"))


# -- the scope rules apply to every format ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("masscan.txt", MASSCAN_LIST),
        ("masscan.json", MASSCAN_JSON),
        ("masscan.xml", MASSCAN_XML),
        ("nmap.xml", NMAP_XML),
        ("zmap.csv", ZMAP_CSV),
    ],
)
def test_scanner_ports_are_kept_and_exclusions_apply(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    scope = build_scope([], ports=(11112,), target_files=[path])
    assert list(scope) == [Target("127.0.0.7", 4242), Target("127.0.0.8", 104)]
    assert scope.address_count == 2
    assert scope.target_count == 2
    excluded = build_scope([], target_files=[path], excludes=["127.0.0.8/32"])
    assert list(excluded) == [Target("127.0.0.7", 4242)]


def test_named_format_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "hits"
    path.write_text(ZMAP_CSV)
    with pytest.raises(TargetError, match=r"hits:1: not a masscan -oL line"):
        build_scope([], target_files=[path], input_format=InputFormat.MASSCAN_LIST)


def test_scanner_entries_must_be_addresses(tmp_path: Path) -> None:
    path = tmp_path / "hits.txt"
    path.write_text("#masscan\nopen tcp 104 pacs.example 1700000000\n")
    with pytest.raises(TargetError, match=r"hits.txt:2: 'pacs.example' is not an IP address"):
        build_scope([], target_files=[path])
    path.write_text("#masscan\nopen tcp 104 224.0.0.1 1700000000\n")
    with pytest.raises(TargetError, match=r"hits.txt:2: .*multicast"):
        build_scope([], target_files=[path])


def test_a_file_without_open_ports_is_no_target(tmp_path: Path) -> None:
    path = tmp_path / "none.txt"
    path.write_text("#masscan\n# end\n")
    with pytest.raises(TargetError, match=r"none.txt \(masscan-list\) name no target"):
        build_scope([], target_files=[path])


def test_repeated_hits_are_probed_once(tmp_path: Path) -> None:
    """masscan retries and ZMap repeats list one open port several times."""
    path = tmp_path / "masscan.txt"
    path.write_text("#masscan\n" + "open tcp 104 127.0.0.7 1700000000\n" * 5)
    scope = build_scope([], target_files=[path])
    assert list(scope) == [Target("127.0.0.7", 104)]
    assert scope.address_count == 1


def _masscan_lines(addresses: int, ports: tuple[int, ...] = (104,)) -> str:
    lines = ["#masscan"]
    for i in range(addresses):
        address = f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        lines.extend(f"open tcp {port} {address} 1700000000" for port in ports)
    return "\n".join(lines) + "\n# end\n"


def test_more_than_a_slash16_of_distinct_addresses_needs_confirmation(tmp_path: Path) -> None:
    # Two ports per address: 65,536 distinct addresses in 131,072 lines are within the limit.
    within = tmp_path / "within.txt"
    within.write_text(_masscan_lines(65536, ports=(104, 11112)))
    scope = build_scope([], target_files=[within])
    assert scope.address_count == 65536
    assert scope.target_count == 131072
    over = tmp_path / "over.txt"
    over.write_text(_masscan_lines(65537))
    refused = r"more than 65,536 distinct addresses .*over.txt.*allow-large"
    with pytest.raises(ScopeError, match=refused):
        build_scope([], target_files=[over])
    allowed = build_scope([], target_files=[over], allow_large=True)
    assert allowed.target_count == 65537
    assert next(iter(allowed)) == Target("127.0.0.0", 104)


def test_a_file_changed_after_counting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "masscan.txt"
    path.write_text(MASSCAN_LIST)
    scope = build_scope([], target_files=[path])
    path.write_text(MASSCAN_LIST + "open tcp 104 127.0.0.9 1700000003\n")
    with pytest.raises(TargetError, match="changed after it was counted"):
        list(scope)


def test_ipv6_hits(tmp_path: Path) -> None:
    path = tmp_path / "masscan6.txt"
    path.write_text("#masscan\nopen tcp 11112 ::1 1700000000\nopen tcp 104 ::ffff:7f00:1 1\n")
    scope = build_scope([], target_files=[path], excludes=["::ffff:0:0/96"])
    assert list(scope) == [Target("::1", 11112)]
    xml = NMAP_XML.replace('addr="127.0.0.8" addrtype="ipv4"', 'addr="::1" addrtype="ipv6"')
    assert entries(xml, InputFormat.NMAP_XML) == [("127.0.0.7", 4242), ("::1", 104)]
    path.write_text("#masscan\nopen tcp 104 ff02::1 1700000000\n")
    with pytest.raises(TargetError, match="multicast"):
        build_scope([], target_files=[path])


def test_transport_follows_the_port_or_the_url_scheme(tmp_path: Path) -> None:
    """A masscan hit on Orthanc's web port goes to the HTTP tier; a URL in a list keeps its
    scheme, as on the command line."""
    hits = tmp_path / "masscan.txt"
    hits.write_text("#masscan\nopen tcp 8042 127.0.0.7 1\nopen tcp 4242 127.0.0.7 1\n")
    listing = tmp_path / "targets.txt"
    listing.write_text("https://127.0.0.9:9443\n127.0.0.10:8080\n")
    scope = build_scope([], target_files=[hits, listing])
    assert list(scope) == [
        Target("127.0.0.7", 8042, "http"),
        Target("127.0.0.7", 4242, "dimse"),
        Target("127.0.0.9", 9443, "https"),
        Target("127.0.0.10", 8080, "http"),
    ]
