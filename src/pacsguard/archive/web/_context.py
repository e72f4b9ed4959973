"""What every DICOMweb handler needs: the archive's service, gate and audit, and the settings
in force (they change on `pacsguard reload`), plus the audit of refused requests.

Refusals of bad input (malformed bodies, parameters, UIDs, slow or oversized request heads;
failed authentication is the gate's to audit) go through the DIMSE front end's
`RefusalTally`: the first of a kind (source, event, reason) in a window at once, the repeats
as one summed line, so that a client hammering us with bad requests cannot fill the disk with
fsync'd lines. A refusal stands even when its line cannot be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.config import Settings
from pacsguard.archive.dimse.aio_refusals import WINDOW_S, RefusalTally
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.service import ArchiveService
from pacsguard.errors import AuditLogError

T = TypeVar("T")


@dataclass
class WebContext:
    """The archive as the web front end sees it. `settings` returns the settings in force;
    blocking calls go to the runtime's pools (`executor` for archive work, `gate_executor`
    for authentication), shared with the DIMSE front end."""

    service: ArchiveService
    gate: Gate
    audit: AuditSink
    settings: Callable[[], Settings]
    executor: Executor
    gate_executor: Executor
    refusals: RefusalTally = field(default_factory=lambda: RefusalTally(time.monotonic))

    async def blocking(self, call: Callable[[], T]) -> T:
        """`call()` on the archive's pool (index, blobs, audit: never on the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def authenticating(self, call: Callable[[], T]) -> T:
        """`call()` on the gate's pool (a burst of logins cannot take the archive's threads)."""
        return await asyncio.get_running_loop().run_in_executor(self.gate_executor, call)

    async def refused(
        self, address: str, event: EventType, reason: str, user: str | None = None
    ) -> None:
        """Audit a refused request (summed per window when repeated)."""
        line = self.refusals.note(
            AuditEvent(
                event,
                EventAction.EXECUTE,
                EventOutcome.MINOR_FAILURE,
                (Participant(address=address, user=user),),
                detail={"transport": "dicomweb", "result": "refused", "reason": reason},
            )
        )
        if line is not None:
            await self._emit_quietly(line)

    async def flush_refusals(self, *, everything: bool = False) -> None:
        for line in self.refusals.due(everything=everything):
            await self._emit_quietly(line)

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(WINDOW_S / 3)
            await self.flush_refusals()

    async def _emit_quietly(self, event: AuditEvent) -> None:
        with contextlib.suppress(AuditLogError):
            await self.blocking(partial(self.audit.emit, event))
