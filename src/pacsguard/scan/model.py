"""Plain values that flow through Find: targets, observations, findings, host reports.

Observations hold only facts about the service (counts, attribute *categories*, AE titles, UIDs
of the implementation); they never hold a patient attribute value, so nothing downstream can
leak one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from pacsguard.dicom.phi import PhiCategory
from pacsguard.scan.fingerprints import Product
from pacsguard.scan.http_model import HttpObservations


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """One endpoint inside the user's scope."""

    host: str
    port: int
    transport: str = "dimse"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    REFUSED = "refused"  # TCP connection refused: nothing listens
    TIMEOUT = "timeout"  # no TCP connection within the connect timeout
    SILENT = "silent"  # TCP connected, but no answer to the association request
    UNREACHABLE = "unreachable"
    PROTOCOL_ERROR = "protocol-error"  # something answered, but not DICOM (or hostile)
    CLOSED = "closed"  # peer closed or aborted without an answer


#: Anomalies a probe records about an acceptor's answers (honeypot signatures use them).
ANOMALY_AC_WITHOUT_IMPLEMENTATION_UID: Final = "ac-without-implementation-uid"
ANOMALY_RJ_PROTOCOL_VERSION: Final = "rj-protocol-version-for-current-version"


@dataclass(frozen=True, slots=True)
class AssociationAttempt:
    """One A-ASSOCIATE-RQ and what came back."""

    calling_ae: str
    called_ae: str
    outcome: Outcome
    reason: str | None = None  # RJ reason name, or a short description of the failure
    accepted_services: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Exposure:
    """How much a query service gives away, counted without keeping values."""

    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    lower_bound: bool = False
    phi_categories: frozenset[PhiCategory] = frozenset()
    method: str = "none"  # e.g. "study-root/study-counts", "study-root/series-fallback"
    queries: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Observations:
    """Everything one probe saw on one target."""

    target: Target
    reachable: bool
    dicom: bool
    attempts: tuple[AssociationAttempt, ...] = ()
    #: None when no association got far enough to tell.
    any_called_ae_accepted: bool | None = None
    calling_ae_checked: bool | None = None
    accepted_called_aets: tuple[str, ...] = ()
    accepted_services: tuple[str, ...] = ()
    max_pdu: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    echo_status: int | None = None
    exposure: Exposure | None = None
    tls: bool = False
    #: What the HTTP tier saw (REST API, DICOMweb, viewers); None for DIMSE targets.
    http: HttpObservations | None = None
    anomalies: tuple[str, ...] = ()
    error: str | None = None
    duration_s: float = 0.0


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem a check found, ready to act on. Evidence is redacted by construction."""

    id: str
    title: str
    severity: Severity
    cvss_vector: str
    cvss_score: float
    evidence: dict[str, Any]
    remediation: str
    references: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostReport:
    """Observations plus the findings checks drew from them: one JSON Lines record."""

    observations: Observations
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    #: What the host runs, as its own answers tell (`pacsguard.scan.fingerprints`).
    product: Product | None = None
    #: Honeypot signatures matched (`pacsguard.scan.honeypots`): ids and reasons.
    honeypot_signatures: tuple[str, ...] = ()
    honeypot_reasons: tuple[str, ...] = ()
    honeypot_flagged: bool = False
    #: Hash of the host's configuration and exposure; equal across an identical fleet.
    config_signature: str | None = None

    @property
    def counted(self) -> bool:
        """Whether totals and exit codes count this host (flagged honeypots are left out)."""
        return not self.honeypot_flagged

    @property
    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)
