"""Where hosts are: country and autonomous system, from MaxMind-format databases the user supplies.

pacsguard ships no database and downloads none. Point it at files you obtained under their
licence: GeoLite2-Country or -City and GeoLite2-ASN (MaxMind), or DB-IP's IP-to-Country Lite /
City Lite and ASN Lite (the same MMDB layout). They are read with MaxMind's own `maxminddb`
reader, imported only when a database is named. A host a database does not cover (loopback and
private ranges are in none of the public ones) gets `null` for what that database would have said.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pacsguard.errors import UsageError
from pacsguard.scan.model import Location

if TYPE_CHECKING:
    from maxminddb import Reader

#: Field names in GeoLite2-Country/City and DB-IP Country/City Lite records, first match wins.
_COUNTRY_KEYS = ("country", "registered_country")


def _open(path: Path, option: str, wants: str) -> Reader:
    import maxminddb

    try:
        reader = maxminddb.open_database(str(path))
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    except (maxminddb.InvalidDatabaseError, ValueError) as exc:
        raise UsageError(
            f"{option}: {path} is not a MaxMind DB (.mmdb) file ({exc}); use e.g. "
            f"GeoLite2-{wants}.mmdb or DB-IP's {wants} Lite"
        ) from None
    kind = reader.metadata().database_type
    is_asn = "asn" in kind.lower()
    if is_asn != (wants == "ASN"):
        reader.close()
        raise UsageError(
            f"{option}: {path} is a {kind!r} database; {option} needs "
            f"{'an' if wants == 'ASN' else 'a'} {wants} database "
            f"(GeoLite2-{wants} or DB-IP's {wants} Lite)"
        )
    return reader


def _record(reader: Reader | None, address: str) -> dict[str, Any] | None:
    if reader is None:
        return None
    try:
        found = reader.get(address)
    except ValueError:  # e.g. an IPv6 address and an IPv4-only database
        return None
    return found if isinstance(found, dict) else None


def _country(record: dict[str, Any] | None) -> str | None:
    if record is None:
        return None
    for key in _COUNTRY_KEYS:
        value = record.get(key)
        if isinstance(value, dict) and isinstance(value.get("iso_code"), str):
            return str(value["iso_code"])
    return None


@dataclass(frozen=True, slots=True)
class GeoDatabases:
    """Which MaxMind-format files to read (`--geoip-country`, `--geoip-asn`): what a Dask
    worker is sent, to open its own `GeoLookup` (the files must exist on every worker)."""

    country_db: Path | None = None
    asn_db: Path | None = None

    def open(self) -> GeoLookup:
        return GeoLookup(country_db=self.country_db, asn_db=self.asn_db)


class GeoLookup:
    """Country and AS lookups for scanned hosts; use as a context manager (closes the files)."""

    def __init__(self, *, country_db: Path | None = None, asn_db: Path | None = None) -> None:
        self._country = _open(country_db, "--geoip-country", "Country") if country_db else None
        try:
            self._asn = _open(asn_db, "--geoip-asn", "ASN") if asn_db else None
        except UsageError:
            self.close()
            raise

    def locate(self, host: str) -> Location:
        """What the databases say about `host` (an IP address literal, as in a Target)."""
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            return Location()
        asn_record = _record(self._asn, address) or {}
        number = asn_record.get("autonomous_system_number")
        organisation = asn_record.get("autonomous_system_organization")
        return Location(
            country=_country(_record(self._country, address)),
            asn=number if isinstance(number, int) else None,
            as_org=organisation if isinstance(organisation, str) else None,
        )

    def close(self) -> None:
        for reader in (self._country, getattr(self, "_asn", None)):
            if reader is not None:
                reader.close()

    def __enter__(self) -> GeoLookup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
