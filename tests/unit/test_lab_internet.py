"""The internet lab's plan, truth and MMDB files (pure; the served lab is in integration/)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import maxminddb
import pytest

from pacsguard.errors import LabError
from pacsguard.lab.banners import http_response, request_complete
from pacsguard.lab.geoip import write_mmdb
from pacsguard.lab.internet import (
    INTERNET_SHARES,
    TLS_PORT,
    host_kind,
    internet_truth,
    plan_internet,
)
from pacsguard.lab.profiles import Profile

#: Planned once per module: the full /16 is what `lab serve --internet` serves.
_SIXTEEN = plan_internet("127.80.0.0/16", seed=3)


def test_plan_is_deterministic_and_seed_dependent() -> None:
    assert plan_internet("127.90.0.0/20", seed=1) == plan_internet("127.90.0.0/20", seed=1)
    assert plan_internet("127.90.0.0/20", seed=1) != plan_internet("127.90.0.0/20", seed=2)


def test_sixteen_is_mostly_closed_with_half_a_percent_dicom() -> None:
    plan = _SIXTEEN
    hosts = plan.farm.hosts
    network = ipaddress.IPv4Network("127.80.0.0/16")
    addresses = [ipaddress.IPv4Address(h.address) for h in hosts]
    assert all(a in network for a in addresses)
    assert addresses == sorted(set(addresses))  # unique, in address order
    assert [h.index for h in hosts] == list(range(len(hosts)))
    # A few thousand listeners, never one per address.
    assert 1000 < len(hosts) < 4000
    kinds = Counter(host_kind(h.profile) for h in hosts)
    assert abs(kinds["dicom"] - 0.005 * 65536) <= 12
    for profile, share in INTERNET_SHARES.items():
        got = sum(1 for h in hosts if h.profile is profile)
        # Cluster members take their template's profile: open and called-AE hosts move a bit.
        # plan_farm's largest-remainder split gives each profile a host first: about 1 % off.
        slack = 30 if profile in (Profile.OPEN, Profile.CALLED_AE_CHECK) else 2
        assert abs(got - share * 65536) <= slack + 0.01 * share * 65536, profile
    assert kinds["tarpit"] > 500 and kinds["http"] > 500 and kinds["honeypot"] >= 2


def test_ports_spread_and_tls_on_2762() -> None:
    ports = Counter(h.port for h in _SIXTEEN.farm.hosts)
    assert set(ports) == {104, 11112, 4242, 2762}
    for host in _SIXTEEN.farm.hosts:
        assert (host.port == TLS_PORT) == (host.profile.tls is not None), host.profile
    ephemeral = plan_internet("127.90.0.0/20", seed=1, ports=(0,))
    assert {h.port for h in ephemeral.farm.hosts} == {0}


def test_clusters_share_configuration_and_counts() -> None:
    truth = internet_truth(plan_internet("127.90.0.0/18", seed=5))
    by_address = {h["address"]: h for h in truth["hosts"]}
    assert len(truth["clusters"]) >= 2
    for name, members in truth["clusters"].items():
        assert len(members) >= 2
        hosts = [by_address[a] for a in members]
        for key in ("profile", "stack", "ae_title", "counts", "exposed_counts"):
            assert len({repr(h[key]) for h in hosts}) == 1, (name, key)
        assert all(h["cluster"] == name for h in hosts)
        assert hosts[0]["kind"] == "dicom"


def test_blocks_tile_the_network_with_fake_countries_and_private_asns() -> None:
    plan = _SIXTEEN
    network = ipaddress.IPv4Network(plan.network)
    covered = 0
    previous_end = int(network.network_address)
    for block in plan.blocks:
        cidr = ipaddress.IPv4Network(block.network)
        assert int(cidr.network_address) == previous_end  # contiguous, no overlap
        assert 20 <= cidr.prefixlen <= 24
        previous_end = int(cidr.broadcast_address) + 1
        covered += cidr.num_addresses
        assert len(block.country) == 2 and block.country.isupper()
        assert 4_200_000_000 <= block.asn <= 4_294_967_294  # RFC 6996 private use
        assert "(synthetic)" in block.as_organization
    assert covered == network.num_addresses
    assert len({b.country for b in plan.blocks}) >= 8
    with pytest.raises(LabError, match="outside"):
        plan.block_of("127.81.0.1")


def test_truth_adds_geography_kinds_and_closed_count() -> None:
    plan = plan_internet("127.90.0.0/20", seed=2)
    truth = internet_truth(plan)
    assert truth["schema"] == "pacsguard-lab-internet-truth/1"
    assert truth["addresses"] == 4096
    assert truth["listening"] == len(truth["hosts"]) == len(plan.farm.hosts)
    assert truth["closed"] == 4096 - truth["listening"]
    assert sum(truth["kinds"].values()) == truth["listening"]
    for host in truth["hosts"]:
        block = plan.block_of(host["address"])
        assert (host["country"], host["asn"]) == (block.country, block.asn)
        assert host["expected_dicom"] == (host["kind"] in ("dicom", "honeypot")) or (
            host["profile"] == "tls-mutual" and not host["expected_dicom"]
        )
        if host["kind"] in ("http", "ssh", "tls", "tarpit", "broken"):
            assert host["expected_dicom"] is False and host["query_exposed"] is False
        if host["kind"] == "tls":
            assert host["tls"]["self_signed"] is True


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("10.0.0.0/16", "127.0.0.0/8"),  # refused: outside loopback
        ("127.0.0.0/8", "prefix"),
        ("127.80.0.0/28", "prefix"),
        ("127.80.0.1/16", "not an IPv4 network"),
        ("localhost", "not an IPv4 network"),
    ],
)
def test_bad_networks_are_refused_clearly(network: str, message: str) -> None:
    with pytest.raises(LabError, match=message):
        plan_internet(network)


def test_bad_ports_are_refused() -> None:
    with pytest.raises(LabError, match="TCP ports"):
        plan_internet("127.90.0.0/20", ports=(70000,))
    with pytest.raises(LabError, match="TCP ports"):
        plan_internet("127.90.0.0/20", ports=())


def test_http_responder_answers_like_nginx() -> None:
    not_found = http_response(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not_found.startswith(b"HTTP/1.1 404 Not Found\r\n")
    head, body = not_found.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head
    assert http_response(b"HEAD / HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")
    # An A-ASSOCIATE-RQ (PDU type 0x01) or silence: a 400, as nginx answers.
    assert http_response(b"\x01\x00\x00\x00\x00\xcd").startswith(b"HTTP/1.1 400 Bad Request")
    assert http_response(b"").startswith(b"HTTP/1.1 400 Bad Request")


def test_http_responder_waits_for_a_request_head_but_not_for_dicom_bytes() -> None:
    assert not request_complete(b"")
    assert not request_complete(b"GE")
    assert not request_complete(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert request_complete(b"GET / HTTP/1.1\r\n\r\n")
    assert request_complete(b"\x01\x00\x00\x00")  # an A-ASSOCIATE-RQ: answered at once
    assert request_complete(b"SSH-2.0-x\r\n")


def test_mmdb_files_answer_every_block_as_the_truth_says(tmp_path: Path) -> None:
    plan = _SIXTEEN
    files = write_mmdb(tmp_path, plan)
    with (
        maxminddb.open_database(str(files.country)) as country,
        maxminddb.open_database(str(files.asn)) as asn,
    ):
        assert country.metadata().database_type == "GeoLite2-Country"
        assert asn.metadata().database_type == "GeoLite2-ASN"
        for block in plan.blocks:
            cidr = ipaddress.IPv4Network(block.network)
            for address in (cidr.network_address, cidr.broadcast_address):
                record = country.get(str(address))
                assert isinstance(record, dict)
                assert record["country"]["iso_code"] == block.country  # type: ignore[index,call-overload]
                assert record["registered_country"]["iso_code"] == block.country  # type: ignore[index,call-overload]
                assert asn.get(str(address)) == {
                    "autonomous_system_number": block.asn,
                    "autonomous_system_organization": block.as_organization,
                }
        # Outside the lab, the files know nothing.
        assert country.get("127.81.0.1") is None
        assert asn.get("127.81.0.1") is None
    assert not list(tmp_path.glob("*.partial"))
