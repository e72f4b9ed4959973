"""Security profiles of simulated PACS hosts, and the plan that assigns them to loopback addresses.

A profile says how a host treats an association (which AE titles it checks, which services it
offers, whether it answers with count attributes) or, for the hostile ones, how it breaks the
protocol. The TLS profiles put the open profile's DICOM behind TLS (`TlsOffer`): well set up,
legacy versions only, an expired self-signed certificate, a weak (1024-bit RSA, SHA-1)
certificate, or a required client certificate. They are not in `DEFAULT_MIX` (whose farms are
also scanned by nmap's plaintext `dicom-ping` in the benchmarks); ask for them by name or mix.
The honeypot profiles (also by name or mix only) answer as dicompot and DICOMHawk do (their
public source, cited at their `Stack`s) and serve one canned archive on every host.
The service profiles are what internet surveys mostly meet on DICOM ports: another protocol
(an HTTP server's 404 page, an SSH banner, HTTPS with a self-signed certificate); they count as
hostile (no DICOM) and are asked for by name or mix, like the internet lab does
(`pacsguard.lab.internet`).
Everything here is pure and deterministic: the same plan arguments give the same farm, so a
benchmark can regenerate the ground truth it scanned (certificates are made when a farm starts,
but what the truth says of them is fixed by the profile).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, Literal

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from pacsguard.dicom import uids
from pacsguard.errors import LabError
from pacsguard.lab.certificates import CertSpec

LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")


class Profile(StrEnum):
    """How one simulated host behaves towards a scanner."""

    OPEN = "open"
    OPEN_NOCOUNTS = "open-nocounts"
    CALLED_AE_CHECK = "called-ae-check"
    CALLING_AE_ALLOWLIST = "calling-ae-allowlist"
    STORE_ONLY = "store-only"
    HOSTILE_GARBAGE = "hostile-garbage"
    HOSTILE_HUGE_PDU = "hostile-huge-pdu"
    HOSTILE_SILENT = "hostile-silent"
    HOSTILE_CLOSE_MID_PDU = "hostile-close-mid-pdu"
    OPEN_TLS = "open-tls"
    TLS_LEGACY = "tls-legacy"
    TLS_EXPIRED = "tls-expired"
    TLS_WEAK_CERT = "tls-weak-cert"
    TLS_MUTUAL = "tls-mutual"
    HONEYPOT_DICOMPOT = "honeypot-dicompot"
    HONEYPOT_DICOMHAWK = "honeypot-dicomhawk"
    SERVICE_HTTP = "service-http"
    SERVICE_SSH = "service-ssh"
    SERVICE_TLS = "service-tls"

    @property
    def hostile(self) -> bool:
        """Does not speak DICOM: breaks the upper layer on purpose, or is another service."""
        return self.value.startswith(("hostile-", "service-"))

    @property
    def other_service(self) -> bool:
        """Another protocol on a DICOM port (HTTP, SSH, HTTPS), served by `lab.banners`."""
        return self.value.startswith("service-")

    @property
    def honeypot(self) -> bool:
        """Answers as a DICOM honeypot does, with the same canned archive on every host."""
        return self.value.startswith("honeypot-")

    @property
    def tls(self) -> TlsOffer | None:
        """The TLS layer in front of the host's DICOM, or None for plain TCP."""
        return TLS_OFFERS.get(self)

    @property
    def checks_called_ae(self) -> bool:
        return self is Profile.CALLED_AE_CHECK

    @property
    def checks_calling_ae(self) -> bool:
        return self is Profile.CALLING_AE_ALLOWLIST

    @property
    def offers_find(self) -> bool:
        """Whether an associated peer may run C-FIND (once past any AE check)."""
        return self in _FIND_PROFILES

    @property
    def returns_counts(self) -> bool:
        """Whether C-FIND answers the optional Number Of ... Related ... attributes."""
        return self.offers_find and self is not Profile.OPEN_NOCOUNTS

    @property
    def holds_data(self) -> bool:
        """Whether hosts with this profile are loaded with a synthetic archive."""
        return self.offers_find

    @property
    def exposed_without_inside_knowledge(self) -> bool:
        """Reachable by a scanner that knows only vendor-default called AE titles (and has no
        client certificate)."""
        tls = self.tls
        return (
            not self.hostile
            and not self.checks_calling_ae
            and (tls is None or tls.client_certificate != "required")
        )


_FIND_PROFILES: Final = frozenset(
    {
        Profile.OPEN,
        Profile.OPEN_NOCOUNTS,
        Profile.CALLED_AE_CHECK,
        Profile.CALLING_AE_ALLOWLIST,
        Profile.OPEN_TLS,
        Profile.TLS_LEGACY,
        Profile.TLS_EXPIRED,
        Profile.TLS_WEAK_CERT,
        Profile.TLS_MUTUAL,
        Profile.HONEYPOT_DICOMPOT,
        Profile.HONEYPOT_DICOMHAWK,
    }
)


@dataclass(frozen=True, slots=True)
class TlsOffer:
    """The TLS layer of a TLS profile: versions served, certificate, client certificate."""

    versions: tuple[str, ...]  # "1.0" ... "1.3", contiguous
    certificate: CertSpec
    #: "required": only clients with a certificate from the farm's lab CA get in.
    client_certificate: Literal["not-requested", "required"] = "not-requested"


#: The certificate each TLS profile presents. Lifetimes are relative to the farm's start.
TLS_OFFERS: Final[Mapping[Profile, TlsOffer]] = {
    Profile.OPEN_TLS: TlsOffer(("1.2", "1.3"), CertSpec("open-tls.pacsguard.lab")),
    Profile.TLS_LEGACY: TlsOffer(("1.0", "1.1"), CertSpec("tls-legacy.pacsguard.lab")),
    Profile.TLS_EXPIRED: TlsOffer(
        ("1.2", "1.3"),
        CertSpec(
            "tls-expired.pacsguard.lab",
            key="rsa",
            key_bits=2048,
            valid_from_days=-730,
            valid_until_days=-30,
            self_signed=True,
        ),
    ),
    Profile.TLS_WEAK_CERT: TlsOffer(
        ("1.2",),
        CertSpec(
            "tls-weak-cert.pacsguard.lab", key="rsa", key_bits=1024, hash="sha1", self_signed=True
        ),
    ),
    Profile.TLS_MUTUAL: TlsOffer(
        ("1.2", "1.3"), CertSpec("tls-mutual.pacsguard.lab"), client_certificate="required"
    ),
    # An HTTPS server on a DICOM port, with the self-signed certificate appliances make at start.
    Profile.SERVICE_TLS: TlsOffer(
        ("1.2", "1.3"),
        CertSpec("service-tls.pacsguard.lab", key="rsa", key_bits=2048, self_signed=True),
    ),
}

#: Service names, as `pacsguard.dicom.uids.SOP_CLASS_NAMES` spells them.
VERIFICATION: Final = "verification"
STUDY_ROOT_FIND: Final = "study-root-find"
PATIENT_ROOT_FIND: Final = "patient-root-find"
STORAGE: Final = "storage"


def services_offered(profile: Profile) -> tuple[str, ...]:
    """The services a host with `profile` accepts once an association is established."""
    if profile.hostile:
        return ()
    if profile is Profile.STORE_ONLY:
        return (VERIFICATION, STORAGE)
    return (VERIFICATION, STUDY_ROOT_FIND, PATIENT_ROOT_FIND, STORAGE)


@dataclass(frozen=True, slots=True)
class Stack:
    """The software a host pretends to run: its default AE title and its association fingerprint.

    UIDs and version names follow what these products send (DCMTK-based servers such as Orthanc
    send DCMTK's), so that fingerprinting code has realistic values to recognise.
    """

    name: str
    ae_title: str
    implementation_class_uid: str
    implementation_version_name: str
    max_pdu: int


_DCMTK_UID: Final = "1.2.276.0.7230010.3.0.3.6.7"
_DCMTK_NAME: Final = "OFFIS_DCMTK_367"

ORTHANC: Final = Stack("orthanc", "ORTHANC", _DCMTK_UID, _DCMTK_NAME, 16384)
DCM4CHEE: Final = Stack("dcm4chee", "DCM4CHEE", "1.2.40.0.13.1.3", "dcm4che-5.31.0", 16378)
DCMQRSCP: Final = Stack("dcmtk-dcmqrscp", "DCMQRSCP", _DCMTK_UID, _DCMTK_NAME, 16384)
STORESCP: Final = Stack("dcmtk-storescp", "STORESCP", _DCMTK_UID, _DCMTK_NAME, 16384)
PYNETDICOM: Final = Stack(
    "pynetdicom",
    "PYNETDICOM",
    str(PYNETDICOM_IMPLEMENTATION_UID),
    str(PYNETDICOM_IMPLEMENTATION_VERSION),
    16382,
)
#: dicompot (nsmfoo/dicompot, on go-netdicom): its A-ASSOCIATE-AC user information carries only
#: the maximum length, 4 MiB (contextmanager.go, serviceprovider.go DefaultMaxPDUSize); its
#: default AE title is "radiant" (server/dicompot.go). Empty UID and name: none sent.
DICOMPOT: Final = Stack("dicompot", "radiant", "", "", 4 * 1024 * 1024)
#: DICOMHawk (honeynet/DICOMHawk, on pynetdicom): names itself DCMTK 3.6.2 but keeps pynetdicom's
#: default maximum PDU (dicom_server/core/dicom_application.py).
DICOMHAWK: Final = Stack(
    "dicomhawk", "ANY-SCP", "1.2.276.0.7230010.3.0.3.6.2", "OFFIS_DCMTK_362", 16382
)
#: Every host of a honeypot profile serves the same canned archive (seed and size).
HONEYPOT_ARCHIVE_SEED: Final = 4_242_424
HONEYPOT_ARCHIVE_PATIENTS: Final = 4
#: What hostile hosts put in the part of an A-ASSOCIATE-AC they do send.
LAB: Final = Stack(
    "pacsguard-lab", "LABPACS", str(uids.IMPLEMENTATION_CLASS_UID) + ".9", "PG_LAB_FARM", 32768
)

#: Which stacks each profile picks from; vendor-default AE titles for the AE-checking profile,
#: so that a scanner with a curated default list can get in.
_STACKS: Final[Mapping[Profile, tuple[Stack, ...]]] = {
    Profile.OPEN: (ORTHANC, DCM4CHEE, PYNETDICOM, DCMQRSCP),
    Profile.OPEN_NOCOUNTS: (DCMQRSCP,),
    Profile.CALLED_AE_CHECK: (ORTHANC, DCM4CHEE, DCMQRSCP),
    Profile.CALLING_AE_ALLOWLIST: (ORTHANC, DCM4CHEE),
    Profile.STORE_ONLY: (STORESCP,),
    # DICOM-TLS as Orthanc serves it, or dcmqrscp behind a TLS terminator.
    Profile.OPEN_TLS: (ORTHANC, DCMQRSCP),
    Profile.TLS_LEGACY: (DCMQRSCP,),
    Profile.TLS_EXPIRED: (ORTHANC, DCMQRSCP),
    Profile.TLS_WEAK_CERT: (DCMQRSCP,),
    Profile.TLS_MUTUAL: (ORTHANC, DCMQRSCP),
    Profile.HONEYPOT_DICOMPOT: (DICOMPOT,),
    Profile.HONEYPOT_DICOMHAWK: (DICOMHAWK,),
}


@dataclass(frozen=True, slots=True)
class HostSpec:
    """Everything that defines one simulated host; the farm and the ground truth read only this."""

    index: int
    address: str
    port: int
    profile: Profile
    stack: Stack
    #: Seed of the host's synthetic archive and of its hostile randomness.
    seed: int
    #: Patients in the archive; 0 means the host holds no data.
    patients: int
    #: Calling AE titles the `calling-ae-allowlist` profile admits (never guessable).
    calling_allowlist: tuple[str, ...] = ()

    @property
    def ae_title(self) -> str:
        return self.stack.ae_title

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class FarmPlan:
    """The hosts of one farm, in address order."""

    seed: int
    hosts: tuple[HostSpec, ...]

    def with_ports(self, ports: Mapping[int, int]) -> FarmPlan:
        """The same plan with the ports actually bound (by host index), e.g. after binding 0."""
        return replace(
            self, hosts=tuple(replace(h, port=ports.get(h.index, h.port)) for h in self.hosts)
        )


#: A realistic share of each profile: mostly open and locked servers, a few hostile ones.
DEFAULT_MIX: Final[Mapping[Profile, float]] = {
    Profile.OPEN: 0.34,
    Profile.OPEN_NOCOUNTS: 0.10,
    Profile.CALLED_AE_CHECK: 0.20,
    Profile.CALLING_AE_ALLOWLIST: 0.16,
    Profile.STORE_ONLY: 0.08,
    Profile.HOSTILE_GARBAGE: 0.03,
    Profile.HOSTILE_HUGE_PDU: 0.03,
    Profile.HOSTILE_SILENT: 0.03,
    Profile.HOSTILE_CLOSE_MID_PDU: 0.03,
}


def require_loopback(address: str) -> ipaddress.IPv4Address:
    """Parse `address` and insist that it lies in 127.0.0.0/8: the lab never listens elsewhere."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise LabError(f"{address!r} is not an IPv4 address; use one in 127.0.0.0/8") from None
    if not isinstance(parsed, ipaddress.IPv4Address) or parsed not in LOOPBACK:
        raise LabError(f"{address} is outside 127.0.0.0/8; the lab binds loopback addresses only")
    return parsed


def host_addresses(base_address: str, count: int) -> list[str]:
    """`count` loopback addresses from `base_address` on, skipping .0 and .255 last octets."""
    current = int(require_loopback(base_address))
    last = int(LOOPBACK.broadcast_address) - 1
    result: list[str] = []
    while len(result) < count:
        if current > last:
            raise LabError(
                f"{count} hosts from {base_address} do not fit in 127.0.0.0/8; "
                "choose a lower base address"
            )
        if current & 0xFF not in (0, 0xFF):
            result.append(str(ipaddress.IPv4Address(current)))
        current += 1
    return result


def assign_profiles(count: int, mix: Mapping[Profile, float], rng: random.Random) -> list[Profile]:
    """Profiles for `count` hosts in proportion to `mix` (largest remainder), shuffled by `rng`.

    When there are at least as many hosts as profiles in the mix, each gets at least one host, so
    that even a small demo farm shows every behaviour.
    """
    weights = {p: w for p, w in mix.items() if w > 0}
    if not weights:
        raise LabError("the profile mix gives no profile a positive share")
    total = sum(weights.values())
    floor = 1 if count >= len(weights) else 0
    spare = count - floor * len(weights)
    exact = {p: spare * w / total for p, w in weights.items()}
    shares = {p: floor + int(exact[p]) for p in weights}
    leftover = count - sum(shares.values())
    # Sorting is stable: ties go to the profile listed first in the mix.
    by_remainder = sorted(weights, key=lambda p: exact[p] - int(exact[p]), reverse=True)
    for profile in by_remainder[:leftover]:
        shares[profile] += 1
    result = [p for p in Profile if p in shares for _ in range(shares[p])]
    rng.shuffle(result)
    return result


def plan_farm(
    count: int,
    *,
    base_address: str = "127.77.0.1",
    port: int = 11112,
    seed: int = 1,
    mix: Mapping[Profile, float] | None = None,
    profile: Profile | None = None,
    max_patients: int = 6,
) -> FarmPlan:
    """Assign profiles, stacks and archives to `count` hosts, deterministically from `seed`.

    `profile` gives every host the same profile; otherwise `mix` (default `DEFAULT_MIX`) sets the
    shares. Port 0 asks the farm to bind an ephemeral port per host (useful in tests).
    """
    if count < 1:
        raise LabError("a farm needs at least one host")
    if not 0 <= port <= 0xFFFF:
        raise LabError(f"port {port} is not a TCP port")
    if max_patients < 1:
        raise LabError("max_patients must be at least 1")
    rng = random.Random(f"pacsguard-lab-plan:{seed}")
    addresses = host_addresses(base_address, count)
    if profile is not None:
        profiles = [Profile(profile)] * count
    else:
        profiles = assign_profiles(count, DEFAULT_MIX if mix is None else mix, rng)
    hosts = []
    for index, (address, host_profile) in enumerate(zip(addresses, profiles, strict=True)):
        stack = rng.choice(_STACKS.get(host_profile, (LAB,)))
        patients = rng.randint(1, max_patients) if host_profile.holds_data else 0
        archive_seed = seed + index
        if host_profile.honeypot:  # canned: the same archive everywhere, a fleet of decoys
            patients, archive_seed = HONEYPOT_ARCHIVE_PATIENTS, HONEYPOT_ARCHIVE_SEED
        allowlist: tuple[str, ...] = ()
        if host_profile.checks_calling_ae:
            allowlist = tuple(f"RADWS{rng.randrange(10**6):06d}" for _ in range(rng.randint(1, 3)))
        hosts.append(
            HostSpec(
                index=index,
                address=address,
                port=port,
                profile=host_profile,
                stack=stack,
                seed=archive_seed,
                patients=patients,
                calling_allowlist=allowlist,
            )
        )
    return FarmPlan(seed=seed, hosts=tuple(hosts))
