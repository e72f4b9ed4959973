"""MMDB files for the internet lab, in the layout of MaxMind's GeoLite2 Country and ASN databases.

The scanner's enrichment reads MMDB files; the lab writes its own for its synthetic allocation
(`InternetPlan.blocks`), so that enrichment can be tested against a known truth without any real
geolocation data. Records follow GeoLite2: `country.iso_code` / `registered_country` / names in
English for Country, `autonomous_system_number` / `autonomous_system_organization` for ASN. The
trees are IPv6 with IPv4 at ::/96, as GeoLite2's are, so any MMDB reader looks IPv4 up as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pacsguard.lab.internet import Block, InternetPlan

COUNTRY_FILE: Final = "GeoLite2-Country.mmdb"
ASN_FILE: Final = "GeoLite2-ASN.mmdb"

#: English names and GeoNames ids of the countries the lab allocates (GeoLite2 carries both).
COUNTRY_NAMES: Final = {
    "AR": ("Argentina", 3865483, "SA"),
    "AU": ("Australia", 2077456, "OC"),
    "BR": ("Brazil", 3469034, "SA"),
    "CA": ("Canada", 6251999, "NA"),
    "CN": ("China", 1814991, "AS"),
    "DE": ("Germany", 2921044, "EU"),
    "ES": ("Spain", 2510769, "EU"),
    "FR": ("France", 3017382, "EU"),
    "GB": ("United Kingdom", 2635167, "EU"),
    "IN": ("India", 1269750, "AS"),
    "IR": ("Iran", 130758, "AS"),
    "IT": ("Italy", 3175395, "EU"),
    "JP": ("Japan", 1861060, "AS"),
    "KR": ("South Korea", 1835841, "AS"),
    "MX": ("Mexico", 3996063, "NA"),
    "NL": ("Netherlands", 2750405, "EU"),
    "RU": ("Russia", 2017370, "EU"),
    "TR": ("Turkey", 298795, "AS"),
    "US": ("United States", 6252001, "NA"),
    "VN": ("Vietnam", 1562822, "AS"),
}
_CONTINENTS: Final = {
    "AS": ("Asia", 6255147),
    "EU": ("Europe", 6255148),
    "NA": ("North America", 6255149),
    "OC": ("Oceania", 6255151),
    "SA": ("South America", 6255150),
}


@dataclass(frozen=True, slots=True)
class MmdbFiles:
    """Where the lab wrote its MMDB files."""

    country: Path
    asn: Path


def country_record(block: Block) -> dict[str, Any]:
    """The GeoLite2-Country record of a block (plain values; `write_mmdb` types them)."""
    name, geoname_id, continent = COUNTRY_NAMES[block.country]
    continent_name, continent_id = _CONTINENTS[continent]
    country = {"geoname_id": geoname_id, "iso_code": block.country, "names": {"en": name}}
    return {
        "continent": {
            "code": continent,
            "geoname_id": continent_id,
            "names": {"en": continent_name},
        },
        "country": country,
        "registered_country": dict(country),
    }


def asn_record(block: Block) -> dict[str, Any]:
    """The GeoLite2-ASN record of a block."""
    return {
        "autonomous_system_number": block.asn,
        "autonomous_system_organization": block.as_organization,
    }


def _write(path: Path, database_type: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet  # type: ignore[import-untyped]  # no stubs published

    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        int_type="u32",  # GeoLite2 stores geoname ids and AS numbers as uint32
        database_type=database_type,
        languages=["en"],
        description={"en": f"pacsguard lab {database_type} (synthetic, loopback only)"},
    )
    for network, record in records:
        writer.insert_network(IPSet([network]), record)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer.to_db_file(str(partial))
    partial.replace(path)


def write_mmdb(directory: Path, plan: InternetPlan) -> MmdbFiles:
    """Write GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb for the plan's blocks into `directory`.

    Each file is written under a temporary name and renamed, so a reader never sees half of one.
    """
    files = MmdbFiles(directory / COUNTRY_FILE, directory / ASN_FILE)
    _write(files.country, "GeoLite2-Country", [(b.network, country_record(b)) for b in plan.blocks])
    _write(files.asn, "GeoLite2-ASN", [(b.network, asn_record(b)) for b in plan.blocks])
    return files
