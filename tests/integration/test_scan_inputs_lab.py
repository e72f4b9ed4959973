"""`pacsguard scan -iL` with scanner output and GeoIP databases, against the lab farm."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pacsguard.cli import main
from pacsguard.lab.profiles import Profile, plan_farm
from pacsguard.report.jsonl import load_schema
from tests.mmdb import asn_record, country_record, write_mmdb

from .conftest import RunningFarm


def read_records(path: Path) -> list[dict[str, Any]]:
    schema = load_schema()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        jsonschema.validate(record, schema)
    return sorted(records, key=lambda r: r["host"])


def test_masscan_and_zmap_hits_are_probed_on_their_ports_with_location(
    running_farm: type[RunningFarm], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Four open hosts, each on its own ephemeral port (none of them a default DICOM port).
    lab = running_farm(
        plan_farm(4, base_address="127.79.3.1", port=0, seed=5, profile=Profile.OPEN)
    )
    hosts = [(h.address, h.port) for h in lab.plan.hosts]
    masscan = tmp_path / "masscan.txt"
    lines = ["#masscan"]
    for address, port in hosts:
        lines.append(f"open tcp {port} {address} 1700000000")
        lines.append(f"open tcp {port} {address} 1700000001")  # a retry's duplicate hit
    masscan.write_text("\n".join(lines) + "\n# end\n")
    country = write_mmdb(
        tmp_path / "country.mmdb",
        "GeoLite2-Country",
        {"127.79.3.0/31": country_record("SE"), "127.79.3.2/31": country_record("PT")},
    )
    asn = write_mmdb(
        tmp_path / "asn.mmdb", "GeoLite2-ASN", {"127.79.0.0/16": asn_record(64600, "Lab Net")}
    )
    out = tmp_path / "scan.jsonl"
    excluded = hosts[3][0]
    history = f"sqlite:///{tmp_path / 'history.sqlite'}"
    argv = ["scan", "-iL", str(masscan), "--exclude", excluded, "-o", str(out), "--no-count"]
    argv += ["--geoip-country", str(country), "--geoip-asn", str(asn), "--read-timeout", "3"]
    assert main([*argv, "--store", history]) == 1  # open hosts have findings
    capsys.readouterr()
    records = read_records(out)
    assert [(r["host"], r["port"]) for r in records] == hosts[:3]
    for record in records:
        assert record["association"]["status"] == "accepted"
        country_code = "SE" if record["host"] == "127.79.3.1" else "PT"
        assert record["location"] == {"country": country_code, "asn": 64600, "as_org": "Lab Net"}

    # The stored run's survey table is per country straight from the enrichment.
    table = tmp_path / "survey.csv"
    assert main(["survey", "report", "1", "--store", history, "--csv", str(table)]) == 0
    with table.open(encoding="utf-8", newline="") as stream:
        rows = {row["country"]: row for row in csv.DictReader(stream)}
    assert set(rows) == {"SE", "PT", "total"}
    assert (rows["SE"]["addresses_probed"], rows["PT"]["addresses_probed"]) == ("1", "2")

    # The same hosts from ZMap, without GeoIP: location is null.
    zmap = tmp_path / "zmap.csv"
    rows = ["saddr,sport,classification,success"]
    rows += [f"{address},{port},synack,1" for address, port in hosts[:2]]
    zmap.write_text("\n".join(rows) + "\n")
    out = tmp_path / "zmap.jsonl"
    assert main(["scan", "-iL", str(zmap), "-o", str(out), "--no-count"]) == 1
    capsys.readouterr()
    records = read_records(out)
    assert [(r["host"], r["port"], r["location"]) for r in records] == [
        (address, port, None) for address, port in hosts[:2]
    ]


def test_bad_scanner_output_exits_2_before_any_probe(
    running_farm: type[RunningFarm], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = running_farm(
        plan_farm(1, base_address="127.79.4.1", port=0, seed=5, profile=Profile.OPEN)
    )
    host = lab.plan.hosts[0]
    masscan = tmp_path / "masscan.txt"
    masscan.write_text(
        f"#masscan\nopen tcp {host.port} {host.address} 1700000000\nopen tcp 104 lab-host 1\n"
    )
    assert main(["scan", "-iL", str(masscan)]) == 2
    captured = capsys.readouterr()
    assert "masscan.txt:3: 'lab-host' is not an IP address" in captured.err
    assert captured.out == ""
    assert lab.farm.stats.connections == 0  # refused before anything was sent

    over = tmp_path / "over.json"
    port = {"port": 104, "proto": "tcp", "status": "open"}
    hits = [
        {"ip": f"127.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "ports": [port]} for i in range(65537)
    ]
    over.write_text("[\n" + ",\n".join(json.dumps(h) for h in hits) + "\n]\n")
    assert main(["scan", "-iL", str(over)]) == 2
    assert "allow-large-scope" in capsys.readouterr().err
