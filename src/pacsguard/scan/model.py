"""Plain values that flow through Find: targets, observations, findings, host reports.

Observations hold only facts about the service (counts, attribute *categories*, AE titles, UIDs
of the implementation); they never hold a patient attribute value, so nothing downstream can
leak one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pacsguard.dicom.phi import PhiCategory


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


@dataclass(frozen=True, slots=True)
class AssociationAttempt:
    """One A-ASSOCIATE-RQ and what came back."""

    calling_ae: str
    called_ae: str
    outcome: Outcome
    reason: str | None = None  # RJ reason name, or a short description of the failure
    accepted_services: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CountBudget:
    """Bounds on the work one target's counting may do (and so on the memory it holds)."""

    max_queries: int = 64
    max_responses: int = 20000


class LowerBoundReason(StrEnum):
    """Why counts are only a lower bound: the answer they come from was not complete."""

    #: A C-FIND ended with a failure status (0xA700 out of resources, e.g. a result limit
    #: reached; 0xA900; 0xCxxx unable to process; any other non-success status).
    FAILURE_STATUS = "failure-status"
    #: A C-FIND ended with status 0xFE00 (cancelled).
    CANCELLED = "cancelled"
    #: The connection failed, timed out or broke the protocol in the middle of an answer.
    INTERRUPTED = "interrupted"
    #: The per-target response budget was reached; the rest of the answer was not read.
    RESPONSE_BUDGET = "response-budget"
    #: The per-target query budget did not cover every study or series lacking counts.
    QUERY_BUDGET = "query-budget"
    #: The per-target time budget (`--total-timeout`) ran out while counting.
    TIME_BUDGET = "time-budget"
    #: A response lacked the unique key needed to tell it apart or to count below it.
    UNIDENTIFIED = "unidentified"


@dataclass(frozen=True, slots=True)
class Exposure:
    """How much a query service gives away, counted without keeping values.

    Counts are of distinct UIDs (patients: of distinct Patient IDs). They are exact only when
    every answer they come from ended in success; otherwise `lower_bound` is true and
    `lower_bound_reasons` says why.
    """

    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    lower_bound: bool = False
    phi_categories: frozenset[PhiCategory] = frozenset()
    method: str = "none"  # "none", "study-root" or "patient-root"
    queries: int = 0
    notes: tuple[str, ...] = ()
    lower_bound_reasons: tuple[LowerBoundReason, ...] = ()
    #: Query responses received (duplicates included: some servers answer once per instance).
    responses: int = 0


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

    @property
    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)
