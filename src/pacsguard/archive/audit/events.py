"""Audit events in DICOM PS3.15 A.5 / IHE ATNA vocabulary.

An event names what happened (EventID code from DCM, e.g. 110114 User Authentication), the action
(C/R/U/D/E), the outcome (0 success, 4 minor failure, 8 serious failure, 12 major failure), who
(active participants: AE title, address, user), and on what (participant objects: study UID,
patient reference, query level), with counts where relevant.

No patient data in clear: a patient is named by a reference (`audit.patients`: a keyed
pseudonym to search by and the Patient ID sealed with AES-GCM for an ATNA export), never by
Patient ID, and no names, birth dates, accession numbers or query values appear: an audit line
says that something was queried, not what was asked for nor what the result contained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Protocol


class EventAction(StrEnum):
    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class EventOutcome(IntEnum):
    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class EventType(StrEnum):
    """What happened, by our name; `code` gives the DCM EventID (PS3.16 CID 400)."""

    APPLICATION_START = "application-start"
    APPLICATION_STOP = "application-stop"
    ASSOCIATION = "association"  # accepted or rejected, with the reason
    AUTHENTICATION = "authentication"  # login success / failure, lockout
    QUERY = "query"
    STORE = "store"  # instances received
    RETRIEVE = "retrieve"  # instances sent by C-GET / C-MOVE
    MOVE_REQUEST = "move-request"  # a C-MOVE / C-GET about to send: before any sub-operation
    POLICY_DENIAL = "policy-denial"
    AUDIT_LOG_USED = "audit-log-used"
    SECURITY_ALERT = "security-alert"  # an operator changed security state (lockout lifted)

    @property
    def code(self) -> tuple[str, str]:
        """(code value, code meaning) in the DCM coding scheme."""
        return _CODES[self]


_CODES: dict[EventType, tuple[str, str]] = {
    EventType.APPLICATION_START: ("110100", "Application Activity"),
    EventType.APPLICATION_STOP: ("110100", "Application Activity"),
    EventType.ASSOCIATION: ("110114", "User Authentication"),
    EventType.AUTHENTICATION: ("110114", "User Authentication"),
    EventType.QUERY: ("110112", "Query"),
    EventType.STORE: ("110104", "DICOM Instances Transferred"),
    EventType.RETRIEVE: ("110104", "DICOM Instances Transferred"),
    EventType.MOVE_REQUEST: ("110103", "DICOM Instances Accessed"),
    EventType.POLICY_DENIAL: ("110113", "Security Alert"),
    EventType.AUDIT_LOG_USED: ("110101", "Audit Log Used"),
    EventType.SECURITY_ALERT: ("110113", "Security Alert"),
}


@dataclass(frozen=True, slots=True)
class Participant:
    """Active participant: who did it (PS3.15 A.5.3.2)."""

    ae_title: str | None = None
    address: str | None = None
    user: str | None = None
    requestor: bool = True


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit event; `detail` holds plain, non-patient facts (reason, level, count)."""

    event: EventType
    action: EventAction
    outcome: EventOutcome
    participants: tuple[Participant, ...] = ()
    #: Participant objects as (kind, id) pairs: ("study", uid), ("instance", uid),
    #: ("patient-ref", reference) (`audit.patients`), ("query", level). Logs written before
    #: patient references may hold ("patient", Patient ID) in clear; the archive's sink
    #: (`notify.AuditFanout`) refuses such an event now.
    objects: tuple[tuple[str, str], ...] = ()
    detail: dict[str, str | int | bool] = field(default_factory=dict)


class AuditSink(Protocol):
    """Where audit events go. `emit` returns once the event is taken (for the primary log:
    durable) and raises when it cannot be: the archive's `AuditFanout` lets the primary log's
    errors fail the operation and logs and swallows those of notification sinks (syslog)."""

    def emit(self, event: AuditEvent) -> None: ...
