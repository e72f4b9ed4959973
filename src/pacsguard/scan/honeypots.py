"""Honeypots and fleets: hosts whose answers say "decoy", and hosts that answer identically.

Surveys count exposure; a honeypot serving fake patients inflates the count and earns a
high-severity finding it does not deserve. Two kinds of evidence keep them apart:

- single-host signatures (`data/honeypots.json`, each citing the honeypot source it was learnt
  from): protocol quirks the probe records as anomalies, and fingerprints that contradict
  themselves (a DCMTK version name with pynetdicom's maximum PDU);
- identical-configuration clusters across hosts: the same implementation, AE policy, services
  and the same exposure counts on several addresses. `config_signature` hashes those facts per
  host; consumers that see every record (the scan summary, reports) group them.

Both are pure functions of Observations. A flag is evidence, not proof: flagged hosts are
reported with the reasons and kept out of totals by default, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

from pacsguard.scan.model import Observations

FORMAT: Final = "pacsguard.honeypots/1"
#: Hosts with one configuration signature (and data to expose) that make a cluster.
CLUSTER_MIN_HOSTS: Final = 3
_CONFIDENCE: Final = frozenset({"high", "medium"})
_WHEN_KEYS: Final = frozenset(
    {"anomalies", "implementation_class_uid", "implementation_version_name", "max_pdu"}
)


class HoneypotDataError(ValueError):
    """The signature file is malformed; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Signature:
    id: str
    name: str
    confidence: str
    reason: str
    anomalies: frozenset[str]
    implementation_class_uid: re.Pattern[str] | None
    implementation_version_name: re.Pattern[str] | None
    max_pdu: int | None
    sources: tuple[str, ...]

    def matches(self, obs: Observations) -> bool:
        if not self.anomalies <= set(obs.anomalies):
            return False
        if self.max_pdu is not None and obs.max_pdu != self.max_pdu:
            return False
        for pattern, value in (
            (self.implementation_class_uid, obs.implementation_class_uid),
            (self.implementation_version_name, obs.implementation_version_name),
        ):
            if pattern is not None and (value is None or not pattern.search(value)):
                return False
        return True


@dataclass(frozen=True, slots=True)
class HoneypotVerdict:
    """Which signatures matched, and whether they add up to a flag."""

    matched: tuple[Signature, ...]

    @property
    def flagged(self) -> bool:
        high = sum(s.confidence == "high" for s in self.matched)
        return high >= 1 or len(self.matched) >= 2

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"{s.name}: {s.reason}" for s in self.matched)


def validate(data: Any) -> list[str]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return [f"not a honeypot signature file: 'format' must be {FORMAT!r}"]
    signatures = data.get("signatures")
    if not isinstance(signatures, list):
        return ["'signatures' must be a list"]
    problems: list[str] = []
    seen: set[str] = set()
    for n, sig in enumerate(signatures):
        where = f"signatures[{n}]"
        if not isinstance(sig, dict) or not isinstance(sig.get("id"), str):
            problems.append(f"{where}: needs an id")
            continue
        where = f"{where} ({sig['id']})"
        if sig["id"] in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(sig["id"])
        if sig.get("confidence") not in _CONFIDENCE:
            problems.append(f"{where}: confidence must be 'high' or 'medium'")
        for key in ("name", "reason"):
            if not isinstance(sig.get(key), str) or not sig[key]:
                problems.append(f"{where}: missing {key}")
        sources = sig.get("sources")
        if not isinstance(sources, list) or not sources:
            problems.append(f"{where}: cite at least one source")
        when = sig.get("when")
        if not isinstance(when, dict) or not when or set(when) - _WHEN_KEYS:
            problems.append(f"{where}: 'when' needs conditions among {sorted(_WHEN_KEYS)}")
            continue
        for key in ("implementation_class_uid", "implementation_version_name"):
            if key in when:
                try:
                    re.compile(str(when[key]))
                except re.error as exc:
                    problems.append(f"{where}: {key} does not compile ({exc})")
        if "max_pdu" in when and not isinstance(when["max_pdu"], int):
            problems.append(f"{where}: max_pdu must be an integer")
        if "anomalies" in when and not isinstance(when["anomalies"], list):
            problems.append(f"{where}: anomalies must be a list")
    return problems


def parse(data: Any) -> tuple[Signature, ...]:
    problems = validate(data)
    if problems:
        raise HoneypotDataError("; ".join(problems))

    def pattern(value: Any) -> re.Pattern[str] | None:
        return None if value is None else re.compile(str(value))

    return tuple(
        Signature(
            id=s["id"],
            name=s["name"],
            confidence=s["confidence"],
            reason=s["reason"],
            anomalies=frozenset(s["when"].get("anomalies", ())),
            implementation_class_uid=pattern(s["when"].get("implementation_class_uid")),
            implementation_version_name=pattern(s["when"].get("implementation_version_name")),
            max_pdu=s["when"].get("max_pdu"),
            sources=tuple(s["sources"]),
        )
        for s in data["signatures"]
    )


def default_path() -> Path:
    return Path(str(resources.files("pacsguard.scan").joinpath("data/honeypots.json")))


@cache
def default_signatures() -> tuple[Signature, ...]:
    return parse(json.loads(default_path().read_text(encoding="utf-8")))


def judge(obs: Observations, signatures: tuple[Signature, ...] | None = None) -> HoneypotVerdict:
    """The honeypot signatures one host's observations match."""
    sigs = default_signatures() if signatures is None else signatures
    return HoneypotVerdict(tuple(s for s in sigs if s.matches(obs)))


def config_signature(obs: Observations) -> str | None:
    """A short hash of what a host is and gives away; equal on identically configured hosts.

    None for hosts that expose nothing: a thousand closed ports are not a fleet."""
    exposure = obs.exposure
    if exposure is None or (exposure.studies == 0 and exposure.patients == 0):
        return None
    facts = {
        "tls": obs.tls,
        "implementation": [obs.implementation_class_uid, obs.implementation_version_name],
        "max_pdu": obs.max_pdu,
        "ae_policy": [obs.any_called_ae_accepted, obs.calling_ae_checked],
        "called_aets": sorted(obs.accepted_called_aets),
        "services": sorted(obs.accepted_services),
        "counts": [exposure.patients, exposure.studies, exposure.series, exposure.instances],
        "phi": sorted(c.value for c in exposure.phi_categories),
    }
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Cluster:
    signature: str
    hosts: int
    patients: int
    studies: int
    instances: int


class ClusterTally:
    """Exposure per configuration signature, to find identical-configuration clusters.

    Fed one host at a time, it keeps one small tuple per distinct signature: a survey of a
    million hosts with a few thousand exposing ones stays small."""

    def __init__(self, min_hosts: int = CLUSTER_MIN_HOSTS) -> None:
        self.min_hosts = min_hosts
        self._by_signature: dict[str, list[int]] = {}

    def add(self, signature: str | None, patients: int, studies: int, instances: int) -> None:
        if signature is None:
            return
        tally = self._by_signature.setdefault(signature, [0, 0, 0, 0])
        for i, value in enumerate((1, patients, studies, instances)):
            tally[i] += value

    def merge(self, other: ClusterTally) -> None:
        """Add another tally's hosts (a shard's, counted on a worker) to this one."""
        for signature, tally in other._by_signature.items():
            mine = self._by_signature.setdefault(signature, [0, 0, 0, 0])
            for i, value in enumerate(tally):
                mine[i] += value

    def clusters(self) -> list[Cluster]:
        """Signatures shared by at least `min_hosts` hosts, largest first."""
        found = [
            Cluster(sig, *tally)
            for sig, tally in self._by_signature.items()
            if tally[0] >= self.min_hosts
        ]
        return sorted(found, key=lambda c: (-c.hosts, c.signature))

    def in_cluster(self, signature: str | None) -> bool:
        if signature is None:
            return False
        tally = self._by_signature.get(signature)
        return tally is not None and tally[0] >= self.min_hosts
