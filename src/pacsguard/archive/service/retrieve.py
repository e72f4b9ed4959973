"""Retrieve: the instances a C-GET, C-MOVE or WADO-RS asks for, authorized, read and audited.

A retrieve is audited before its first sub-operation (a `move-request` line, for C-GET too)
and after its last (a `retrieve` line counting every sub-operation, `RetrieveTally`); the front
ends turn `AuditLogError` into failure statuses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import BinaryIO

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.model import InstanceRecord
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service._core import ServiceCore, _participant
from pacsguard.dicom.levels import Level
from pacsguard.errors import AuditLogError


class Retrieval(ServiceCore):
    """C-GET / C-MOVE (and WADO-RS): which instances, their bytes, and the audit lines."""

    def instances_to_retrieve(
        self,
        principal: Principal,
        action: Action,
        level: Level,
        uids: list[str],
        *,
        destination: str | None = None,
    ) -> list[InstanceRecord]:
        """The instances a C-GET / C-MOVE asks for (unique keys at `level`), authorized. When
        there are any, a `move-request` line (instances about to be accessed, by whom, for which
        destination) is durable before this returns: AuditLogError otherwise, and nothing may
        be sent. An index failure is audited (nothing was retrieved) and raised."""
        self.require(principal, action)
        found: dict[str, InstanceRecord] = {}
        try:
            for uid in uids:
                for record in self._index.instances(level, uid):
                    found[record.sop_instance_uid] = record
        except Exception:
            with contextlib.suppress(AuditLogError):  # the index's failure is the answer
                self._audit.emit(
                    AuditEvent(
                        EventType.RETRIEVE,
                        EventAction.READ,
                        EventOutcome.SERIOUS_FAILURE,
                        _retrieve_participants(principal, destination),
                        detail={"action": action.value, "result": "index unavailable"},
                    )
                )
            raise
        records = list(found.values())
        if records:
            self._audit.emit(
                AuditEvent(
                    EventType.MOVE_REQUEST,
                    EventAction.READ,
                    EventOutcome.SUCCESS,
                    _retrieve_participants(principal, destination),
                    _studies(records),
                    {"operation": action.value, "instances": len(records)},
                )
            )
        return records

    def open_instance(self, record: InstanceRecord) -> BinaryIO:
        return self._blobs.open(record.blob_key)

    def audit_retrieve(
        self,
        principal: Principal,
        records: list[InstanceRecord],
        *,
        destination: str | None,
        tally: RetrieveTally,
    ) -> None:
        """The line that ends a retrieve, counting every sub-operation (`RetrieveTally`);
        AuditLogError when it cannot be made durable."""
        self._audit.emit(
            AuditEvent(
                EventType.RETRIEVE,
                EventAction.READ,
                EventOutcome.SUCCESS if tally.sent == len(records) else EventOutcome.MINOR_FAILURE,
                _retrieve_participants(principal, destination),
                _studies(records),
                tally.detail(),
            )
        )


@dataclass(slots=True)
class RetrieveTally:
    """Where each sub-operation of a retrieve ended: `sent` (the peer answered its C-STORE),
    `failed` (could not be sent: unreadable, or no presentation context for it), `in_flight`
    (being sent when the operation ended: it may have reached the peer) and `not_started`
    (cancelled or cut off before it began). They add up to the instances matched."""

    sent: int = 0
    failed: int = 0
    in_flight: int = 0
    not_started: int = 0

    def detail(self) -> dict[str, str | int | bool]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "not_started": self.not_started,
        }


def _retrieve_participants(
    principal: Principal, destination: str | None
) -> tuple[Participant, ...]:
    own = (_participant(principal),)
    return own + ((Participant(ae_title=destination, requestor=False),) if destination else ())


def _studies(records: list[InstanceRecord]) -> tuple[tuple[str, str], ...]:
    return tuple(("study", s) for s in sorted({r.study_instance_uid for r in records}))
