"""What every part of the archive service shares: statuses, limits, the policy check.

`ServiceCore` holds the index, blob store, audit sink and authorizer; the ingest, query and
retrieve parts (`ingest`, `query`, `retrieve`) are mixed into `ArchiveService` on top of it, so
that each concept lives in its own module while front ends see one service object.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.patients import PatientKey, patient_objects
from pacsguard.archive.blobs import BlobStore
from pacsguard.archive.index import IndexStore
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.staging import StagingArea
from pacsguard.errors import AuditLogError

#: One logger for the whole service, whichever of its modules writes.
log = logging.getLogger("pacsguard.archive.service")

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4.2): the front end passes them through.
SUCCESS: Final = 0x0000
DUPLICATE_SOP_INSTANCE: Final = 0x0111
NOT_AUTHORIZED: Final = 0x0124
#: General "processing failure" (PS3.7 C.4.2): the index could not record the instance.
PROCESSING_FAILURE: Final = 0x0110
OUT_OF_RESOURCES: Final = 0xA700
DATASET_MISMATCH: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000

Authorizer = Callable[[Principal, Action], None]


class Denied(Exception):
    """The policy refused the action; already audited. `status` is the DICOM status to send."""

    def __init__(self, action: Action, principal: Principal) -> None:
        super().__init__(f"{principal.name} may not {action.value}")
        self.action = action
        self.status = NOT_AUTHORIZED


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    max_object_bytes: int = 4 * 1024**3
    max_query_results: int = 1000
    #: Largest pixel data retrieve decompresses for a client that cannot take the stored
    #: compressed syntax (`[server] max_decompressed_bytes`).
    max_decompressed_bytes: int = 1024**3


class _Episodes:
    """One error when writes start failing (a full disk refuses every store after it), and one
    warning when they work again: not a traceback per refused store."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._failing = False
        self._lock = threading.Lock()

    def failed(self, error: Exception) -> None:
        with self._lock:
            if self._failing:
                return
            self._failing = True
        log.error("%s failed: stores are refused until it works again", self._what, exc_info=error)

    def worked(self) -> None:
        if not self._failing:
            return
        with self._lock:
            if not self._failing:
                return
            self._failing = False
        log.warning("%s works again: stores resume", self._what)


def _participant(principal: Principal) -> Participant:
    return Participant(
        ae_title=principal.ae_title or None, address=principal.address, user=principal.username
    )


class ServiceCore:
    """The index, blob store, audit sink and policy every operation of the service uses."""

    def __init__(
        self,
        index: IndexStore,
        blobs: BlobStore,
        audit: AuditSink,
        authorize: Authorizer,
        limits: ServiceLimits | None = None,
        *,
        staging: StagingArea | None = None,
        patients: PatientKey | None = None,
    ) -> None:
        self._index = index
        self._blobs = blobs
        self._audit = audit
        self._authorize = authorize
        self.limits = limits or ServiceLimits()
        #: Where front ends stage objects too large for memory (encrypted, in the data folder).
        self.staging = staging
        #: Turns Patient IDs into the references audit events hold (`audit.patients`); without
        #: it (no at-rest key) audit events name no patient at all, never one in clear.
        self._patients = patients
        self._locks = tuple(threading.Lock() for _ in range(64))
        self._blob_writes: _Episodes = _Episodes("blob store write")
        self._index_writes: _Episodes = _Episodes("index commit")

    def _patient_objects(self, patient_ids: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """Audit participant objects naming these patients (pseudonym and sealed ID)."""
        return patient_objects(self._patients, patient_ids)

    # -- policy ------------------------------------------------------------------------------
    def require(self, principal: Principal, action: Action) -> None:
        """Authorize or audit the denial and raise Denied."""
        try:
            self._authorize(principal, action)
        except Exception:
            # The denial stands even when it cannot be audited (the log reports that itself).
            with contextlib.suppress(AuditLogError):
                self._audit.emit(
                    AuditEvent(
                        EventType.POLICY_DENIAL,
                        EventAction.EXECUTE,
                        EventOutcome.SERIOUS_FAILURE,
                        (_participant(principal),),
                        detail={"action": action.value},
                    )
                )
            raise Denied(action, principal) from None
