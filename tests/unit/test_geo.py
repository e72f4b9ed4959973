"""GeoIP enrichment from MaxMind-format databases the tests write for loopback ranges."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from pacsguard.errors import UsageError
from pacsguard.report.jsonl import load_schema, to_record
from pacsguard.scan.geo import GeoLookup
from pacsguard.scan.model import HostReport, Location, Observations, Target
from tests.mmdb import asn_record, country_record, write_mmdb


@pytest.fixture
def databases(tmp_path: Path) -> tuple[Path, Path]:
    country = write_mmdb(
        tmp_path / "GeoLite2-Country.mmdb",
        "GeoLite2-Country",
        {
            "127.77.0.0/16": country_record("DE"),
            "127.78.0.0/24": country_record("FR", registered_only=True),
            "::1/128": country_record("NL"),
        },
    )
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {
            "127.77.0.0/17": asn_record(64512, "Lab Hospital Net"),
            "127.77.128.0/17": asn_record(4200000001, "Lab Imaging Cloud"),
        },
    )
    return country, asn


def test_country_and_as_of_lab_addresses(databases: tuple[Path, Path]) -> None:
    country, asn = databases
    with GeoLookup(country_db=country, asn_db=asn) as geo:
        assert geo.locate("127.77.0.5") == Location("DE", 64512, "Lab Hospital Net")
        assert geo.locate("127.77.200.1") == Location("DE", 4200000001, "Lab Imaging Cloud")
        # GeoLite2 falls back to the registered country when the country is unknown.
        assert geo.locate("127.78.0.9") == Location("FR", None, None)
        assert geo.locate("::1") == Location("NL", None, None)
        assert geo.locate("127.1.2.3") == Location(None, None, None)


def test_one_database_alone(databases: tuple[Path, Path]) -> None:
    country, asn = databases
    with GeoLookup(asn_db=asn) as geo:
        assert geo.locate("127.77.0.5") == Location(None, 64512, "Lab Hospital Net")
    with GeoLookup(country_db=country) as geo:
        assert geo.locate("127.77.0.5") == Location("DE", None, None)


def test_dbip_lite_layout_is_read_the_same(tmp_path: Path) -> None:
    country = write_mmdb(
        tmp_path / "dbip-country-lite.mmdb",
        "DBIP-Country-Lite",
        {"127.0.0.0/8": country_record("CH")},
    )
    asn = write_mmdb(
        tmp_path / "dbip-asn-lite.mmdb",
        "DBIP-ASN-Lite (compat=GeoLite2-ASN)",
        {"127.0.0.0/8": asn_record(65001, "Lab Transit")},
    )
    with GeoLookup(country_db=country, asn_db=asn) as geo:
        assert geo.locate("127.0.0.1") == Location("CH", 65001, "Lab Transit")


def test_bad_databases_get_clear_errors(databases: tuple[Path, Path], tmp_path: Path) -> None:
    country, asn = databases
    with pytest.raises(UsageError, match=r"--geoip-country: .* is a 'GeoLite2-ASN' database"):
        GeoLookup(country_db=asn)
    with pytest.raises(UsageError, match=r"--geoip-asn: .*'GeoLite2-Country'.* needs an ASN"):
        GeoLookup(asn_db=country)
    text = tmp_path / "not.mmdb"
    text.write_text("127.0.0.1 DE\n")
    with pytest.raises(UsageError, match=r"--geoip-country: .*not.mmdb is not a MaxMind DB"):
        GeoLookup(country_db=text)
    with pytest.raises(UsageError, match=r"--geoip-asn: cannot read .*missing.mmdb"):
        GeoLookup(country_db=country, asn_db=tmp_path / "missing.mmdb")


def test_the_record_carries_location_and_matches_the_schema() -> None:
    observations = Observations(target=Target("127.77.0.5", 104), reachable=False, dicom=False)
    schema = load_schema()
    plain = to_record(HostReport(observations))
    assert plain["location"] is None
    jsonschema.validate(plain, schema)
    located = to_record(HostReport(observations, location=Location("DE", 64512, "Lab")))
    assert located["location"] == {"country": "DE", "asn": 64512, "as_org": "Lab"}
    jsonschema.validate(located, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**located, "location": {"country": "Germany"}}, schema)
