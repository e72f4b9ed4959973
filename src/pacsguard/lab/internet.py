"""A lab that looks like the internet: a /16 of loopback addresses, mostly closed.

Of 65,536 addresses only a few per cent listen (nothing is bound elsewhere, so the kernel refuses
connections there, as most of the internet does): tarpits that accept and never answer
(`hostile-silent`), other services on DICOM ports (`service-http`, `-ssh`, `-tls`), a few
protocol breakers, DICOM honeypots, and about 0.5 % real DICOM servers in the profile mix below.
Some real servers form identical-configuration clusters: the same stack, AE policy and archive
seed, so a survey sees the same counts on each. Every address belongs to a synthetic block with
a country (ISO 3166 alpha-2), an ASN from the private-use range (RFC 6996: never a real network)
and an obviously fake organisation; `lab.geoip` writes them as MMDB files.

Everything here is pure and deterministic in (network, seed, ports); the farm serves
`InternetPlan.farm` and the truth is `internet_truth(plan)`.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from pacsguard.errors import LabError
from pacsguard.lab.profiles import LOOPBACK, FarmPlan, Profile, plan_farm
from pacsguard.lab.truth import farm_truth

SCHEMA: Final = "pacsguard-lab-internet-truth/1"
DEFAULT_NETWORK: Final = "127.80.0.0/16"
#: DICOM (104), its registered alternative (11112), Orthanc's default (4242), DICOM-TLS (2762).
DEFAULT_PORTS: Final = (104, 11112, 4242, 2762)
TLS_PORT: Final = 2762

#: Share of all addresses per profile; the rest is closed. Real DICOM servers sum to 0.5 %.
INTERNET_SHARES: Final[Mapping[Profile, float]] = {
    # Real DICOM servers, in roughly the proportions internet surveys report: about half
    # answer any AE title, some check the called AE, a share only accept known calling AEs.
    Profile.OPEN: 0.0018,
    Profile.OPEN_NOCOUNTS: 0.0004,
    Profile.CALLED_AE_CHECK: 0.0008,
    Profile.CALLING_AE_ALLOWLIST: 0.0008,
    Profile.STORE_ONLY: 0.0004,
    Profile.OPEN_TLS: 0.0004,
    Profile.TLS_LEGACY: 0.0002,
    Profile.TLS_MUTUAL: 0.0002,
    # Decoys.
    Profile.HONEYPOT_DICOMPOT: 0.0002,
    Profile.HONEYPOT_DICOMHAWK: 0.0002,
    # Tarpits and other services on DICOM ports.
    Profile.HOSTILE_SILENT: 0.010,
    Profile.SERVICE_HTTP: 0.010,
    Profile.SERVICE_SSH: 0.005,
    Profile.SERVICE_TLS: 0.005,
    # Broken or deliberately odd listeners.
    Profile.HOSTILE_GARBAGE: 0.0005,
    Profile.HOSTILE_HUGE_PDU: 0.0002,
    Profile.HOSTILE_CLOSE_MID_PDU: 0.0002,
}

#: Countries of the synthetic allocation, weighted roughly as DICOM surveys rank them.
_COUNTRIES: Final = (
    ("US", 30),
    ("DE", 8),
    ("CN", 8),
    ("IN", 7),
    ("BR", 6),
    ("TR", 4),
    ("GB", 4),
    ("FR", 4),
    ("IT", 4),
    ("JP", 4),
    ("KR", 3),
    ("RU", 3),
    ("ES", 3),
    ("MX", 3),
    ("AU", 2),
    ("CA", 2),
    ("NL", 2),
    ("IR", 2),
    ("VN", 2),
    ("AR", 1),
)
#: Private-use 32-bit AS numbers (RFC 6996): no real network has them.
_FIRST_ASN: Final = 4_200_000_000
_ORG_WORDS: Final = ("Imaginary", "Sample", "Fictional", "Pretend", "Placeholder", "Mock")
_ORG_KINDS: Final = ("Hospital Net", "Telecom", "Cloud Hosting", "Broadband", "Clinic Link")
#: Cluster sizes: several hosts sharing one configuration each.
_CLUSTER_SIZES: Final = (8, 6, 5, 4, 3)


@dataclass(frozen=True, slots=True)
class Block:
    """One synthetic allocation: a CIDR with its country and autonomous system."""

    network: str
    country: str
    asn: int
    as_organization: str


@dataclass(frozen=True, slots=True)
class InternetPlan:
    """The /16 lab: the listening hosts (a farm plan), the allocation, and the clusters."""

    network: str
    seed: int
    ports: tuple[int, ...]
    farm: FarmPlan
    blocks: tuple[Block, ...]
    #: Host index -> cluster name, for hosts that share one configuration.
    clusters: Mapping[int, str]

    @property
    def addresses(self) -> int:
        return ipaddress.IPv4Network(self.network).num_addresses

    def block_of(self, address: str) -> Block:
        """The block holding `address` (LabError outside the lab's network)."""
        parsed = ipaddress.IPv4Address(address)
        for block in self.blocks:
            if parsed in ipaddress.IPv4Network(block.network):
                return block
        raise LabError(f"{address} is outside the internet lab {self.network}")

    def with_farm(self, farm: FarmPlan) -> InternetPlan:
        """The same plan with the farm as bound (ports filled in)."""
        return replace(self, farm=farm)


def parse_network(network: str) -> ipaddress.IPv4Network:
    """A lab network: inside 127.0.0.0/8, between /24 and /12 (the lab's real size is /16)."""
    try:
        parsed = ipaddress.IPv4Network(network, strict=True)
    except ValueError as exc:
        raise LabError(f"{network!r} is not an IPv4 network such as 127.80.0.0/16: {exc}") from None
    if not parsed.subnet_of(LOOPBACK):
        raise LabError(f"{network} is outside 127.0.0.0/8; the lab binds loopback addresses only")
    if not 12 <= parsed.prefixlen <= 24:
        raise LabError(f"{network}: use a prefix between /12 and /24 (the internet lab is a /16)")
    return parsed


def allocate_blocks(network: ipaddress.IPv4Network, rng: random.Random) -> tuple[Block, ...]:
    """Cut `network` into aligned blocks of /24 to /20 with countries and ASNs, in order."""
    countries = [c for c, _ in _COUNTRIES]
    weights = [w for _, w in _COUNTRIES]
    organizations: list[tuple[int, str, str]] = []  # (asn, organisation, country)
    blocks: list[Block] = []
    start, end = int(network.network_address), int(network.broadcast_address) + 1
    current = start
    while current < end:
        fitting = [
            p for p in range(20, 25) if current % (1 << (32 - p)) == 0 and p >= network.prefixlen
        ]
        prefix = rng.choice(fitting) if fitting else 24
        # A third of the blocks go to an AS already seen: providers hold several blocks.
        if organizations and rng.random() < 0.33:
            asn, organization, country = rng.choice(organizations)
        else:
            asn = _FIRST_ASN + len(organizations) * 7 + rng.randrange(7)
            country = rng.choices(countries, weights)[0]
            organization = (
                f"{rng.choice(_ORG_WORDS)} {rng.choice(_ORG_KINDS)} {len(organizations) + 1} "
                "(synthetic)"
            )
            organizations.append((asn, organization, country))
        cidr = ipaddress.IPv4Network((current, prefix))
        blocks.append(Block(str(cidr), country, asn, organization))
        current += cidr.num_addresses
    return tuple(blocks)


def _port_for(profile: Profile, ports: Sequence[int], rng: random.Random) -> int:
    if len(ports) == 1:
        return ports[0]
    if profile.tls is not None and TLS_PORT in ports:
        return TLS_PORT
    plain = [p for p in ports if p != TLS_PORT] or list(ports)
    return rng.choice(plain)


def plan_internet(
    network: str = DEFAULT_NETWORK,
    *,
    seed: int = 1,
    ports: Sequence[int] = DEFAULT_PORTS,
    shares: Mapping[Profile, float] | None = None,
) -> InternetPlan:
    """Plan the internet lab over `network`, deterministically from `seed`.

    Each listening host listens on one of `ports` (TLS profiles on 2762 when it is among them);
    a single port 0 asks for ephemeral ports, as tests do.
    """
    parsed = parse_network(network)
    if not ports or any(not 0 <= p <= 0xFFFF for p in ports):
        raise LabError(f"ports {list(ports)} are not all TCP ports")
    shares = INTERNET_SHARES if shares is None else shares
    total = parsed.num_addresses
    counts = {p: round(total * s) for p, s in shares.items() if s > 0}
    listening = sum(counts.values())
    if listening < 1 or listening > total - 2:
        raise LabError(f"the shares give {listening} listening hosts out of {total} addresses")
    rng = random.Random(f"pacsguard-lab-internet:{network}:{seed}")
    farm = plan_farm(
        listening,
        base_address=str(parsed.network_address + 1),
        port=0,
        seed=seed,
        # Weights equal to the wanted counts: plan_farm's largest-remainder split keeps them
        # within a host or two (it gives each profile at least one).
        mix={p: float(n) for p, n in counts.items()},
    )
    offsets = sorted(rng.sample(range(1, total - 1), listening))
    hosts = [
        replace(
            spec,
            address=str(parsed.network_address + offset),
            port=_port_for(spec.profile, ports, rng),
        )
        for spec, offset in zip(farm.hosts, offsets, strict=True)
    ]
    clusters: dict[int, str] = {}
    candidates = [h.index for h in hosts if h.profile in (Profile.OPEN, Profile.CALLED_AE_CHECK)]
    rng.shuffle(candidates)
    for number, size in enumerate(_CLUSTER_SIZES, start=1):
        members, candidates = candidates[:size], candidates[size:]
        if len(members) < 2:
            break
        template = hosts[members[0]]
        for index in members:
            hosts[index] = replace(
                hosts[index],
                profile=template.profile,
                stack=template.stack,
                seed=template.seed,
                patients=template.patients,
            )
            clusters[index] = f"cluster-{number}"
    return InternetPlan(
        network=str(parsed),
        seed=seed,
        ports=tuple(ports),
        farm=replace(farm, hosts=tuple(hosts)),
        blocks=allocate_blocks(parsed, rng),
        clusters=clusters,
    )


def host_kind(profile: Profile) -> str:
    """What a survey should conclude about a listener: dicom, honeypot, tarpit, http, ..."""
    if profile.honeypot:
        return "honeypot"
    if profile is Profile.HOSTILE_SILENT:
        return "tarpit"
    if profile.other_service:
        return profile.value.removeprefix("service-")
    if profile.hostile:
        return "broken"
    return "dicom"


def internet_truth(plan: InternetPlan) -> dict[str, Any]:
    """The farm truth of the listening hosts, plus geography, clusters and what is closed.

    Schema `pacsguard-lab-internet-truth/1`: the `pacsguard-lab-truth/1` document (whose hosts are
    only the listening ones) with, per host, "kind", "country", "asn", "as_organization" and
    "cluster" (a name or null); and at the top "network", "ports", "addresses", "listening",
    "closed", "kinds" {kind: hosts}, "clusters" {name: [address]} and "blocks" [{"network",
    "country", "asn", "as_organization"}]. Every address not listed is closed.
    """
    document = farm_truth(plan.farm)
    kinds: dict[str, int] = {}
    clusters: dict[str, list[str]] = {}
    for spec, host in zip(plan.farm.hosts, document["hosts"], strict=True):
        block = plan.block_of(spec.address)
        kind = host_kind(spec.profile)
        kinds[kind] = kinds.get(kind, 0) + 1
        cluster = plan.clusters.get(spec.index)
        if cluster is not None:
            clusters.setdefault(cluster, []).append(spec.address)
        host.update(
            kind=kind,
            country=block.country,
            asn=block.asn,
            as_organization=block.as_organization,
            cluster=cluster,
        )
    listening = len(plan.farm.hosts)
    document.update(
        schema=SCHEMA,
        network=plan.network,
        ports=list(plan.ports),
        addresses=plan.addresses,
        listening=listening,
        closed=plan.addresses - listening,
        kinds=dict(sorted(kinds.items())),
        clusters=clusters,
        blocks=[asdict(b) for b in plan.blocks],
    )
    return document
