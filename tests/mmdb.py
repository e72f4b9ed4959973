"""Small MaxMind-format databases for the lab's loopback ranges, written with `mmdb-writer`.

Public GeoIP databases cover no loopback or private range, so tests write their own, laid out as
GeoLite2-Country and GeoLite2-ASN are (an IPv6 tree with IPv4 at ::/96). `mmdb-writer` does not
refuse reserved networks such as 127.0.0.0/8 (MaxMind's Go writer does unless told to include
them), so no special option is needed. ASNs are from the private range 64512-65534 (RFC 6996).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_mmdb(path: Path, database_type: str, networks: dict[str, dict[str, Any]]) -> Path:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description="pacsguard test database",
        int_type="u32",
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def country_record(iso_code: str, *, registered_only: bool = False) -> dict[str, Any]:
    key = "registered_country" if registered_only else "country"
    return {key: {"iso_code": iso_code, "names": {"en": iso_code}}, "continent": {"code": "EU"}}


def asn_record(number: int, organisation: str) -> dict[str, Any]:
    return {"autonomous_system_number": number, "autonomous_system_organization": organisation}
