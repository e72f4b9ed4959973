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
ANOMALY_FIND_PIXEL_DATA: Final = "find-response-with-pixel-data"


@dataclass(frozen=True, slots=True)
class AssociationAttempt:
    """One A-ASSOCIATE-RQ and what came back."""

    calling_ae: str
    called_ae: str
    outcome: Outcome
    reason: str | None = None  # RJ reason name, or a short description of the failure
    accepted_services: tuple[str, ...] = ()
    tls: bool = False  # sent inside TLS


class ClientCertificate(StrEnum):
    """What a TLS server asks of a client that has no certificate to show."""

    NOT_REQUESTED = "not-requested"  # no CertificateRequest in the handshake
    REQUESTED = "requested"  # asked for one, but carried on without it
    REQUIRED = "required"  # asked for one and ended the connection without it
    UNKNOWN = "unknown"  # this Python cannot see the handshake messages


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What the server's (leaf) certificate says; observed, never trusted or verified."""

    subject: str  # RFC 4514
    issuer: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: str  # ISO 8601, UTC
    not_after: str
    expired: bool
    not_yet_valid: bool
    self_signed: bool
    key_type: str  # rsa, ec, ed25519, ed448, dsa, unknown
    key_bits: int | None
    signature_algorithm: str  # e.g. rsa-with-sha256, ecdsa-with-sha384, ed25519
    signature_hash: str | None  # e.g. sha1, sha256; None for EdDSA
    sha256_fingerprint: str


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """What the TLS layer in front of a DICOM service accepts and presents."""

    #: TLS versions by name ("1.0" ... "1.3"): the server answered with that version...
    versions_accepted: tuple[str, ...]
    #: ... or refused it, or no ClientHello could be sent to find out (this machine's TLS
    #: library cannot offer the version, or the connection failed before).
    versions_refused: tuple[str, ...] = ()
    versions_untested: tuple[str, ...] = ()
    #: What a client offering everything from 1.0 to 1.3 got.
    negotiated_version: str | None = None
    cipher: str | None = None
    client_certificate: ClientCertificate = ClientCertificate.UNKNOWN
    certificate: CertificateFacts | None = None
    #: Why `certificate` is missing although a handshake completed (e.g. undecodable DER).
    certificate_error: str | None = None


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
    #: Responses carried Pixel Data, which no query asks for (PS3.4 C.4.1.1.3: a response holds
    #: the requested keys): stored objects handed out wholesale, as canned decoys do.
    pixel_data_in_answers: bool = False


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
    #: Set whenever a TLS handshake succeeded on the target (`tls` says DIMSE ran inside it).
    tls_facts: TlsFacts | None = None
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
class Location:
    """Where a host is, as the user's GeoIP databases say (`pacsguard.scan.geo`)."""

    country: str | None = None  # ISO 3166-1 alpha-2
    asn: int | None = None
    as_org: str | None = None


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
    #: Country and AS, when the user named GeoIP databases.
    location: Location | None = None

    @property
    def counted(self) -> bool:
        """Whether totals and exit codes count this host (flagged honeypots are left out)."""
        return not self.honeypot_flagged

    @property
    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)
