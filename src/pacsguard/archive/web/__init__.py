"""The DICOMweb front end (PS3.18): QIDO-RS, WADO-RS and STOW-RS over HTTPS.

A Starlette app served by uvicorn on the event loop of the DIMSE front end, in the same
process, over the same archive service, gate and audit log: it holds no archive logic of its
own. Handlers translate requests into service calls and domain errors into HTTP answers.

Modules: `_app` (routes, the guard every request passes), `_auth` (bearer token -> Principal),
`_qido`, `_wado`, `_stow` (the three services), `_media` (Accept, Content-Type), `_stream`
(streamed answers that always end their audit), `_server` (uvicorn, slow clients),
`_context` (what handlers share; audit of refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from starlette.applications import Starlette

from pacsguard.archive.audit.events import AuditSink, EventType
from pacsguard.archive.config import Settings
from pacsguard.archive.runtime import Endpoint, Runtime
from pacsguard.archive.security.gate import Gate
from pacsguard.archive.security.tls import server_context
from pacsguard.archive.service import ArchiveService
from pacsguard.archive.web._app import build_app
from pacsguard.archive.web._auth import HttpCredential, authenticate
from pacsguard.archive.web._context import WebContext
from pacsguard.archive.web._server import WebListener, web_tls_context

__all__ = ["HttpCredential", "WebContext", "WebFrontEnd", "authenticate", "build_app"]


class WebFrontEnd:
    """The app and its listener, a `runtime.FrontEnd`: `start` and `stop` run on the runtime's
    loop, blocking calls on its pools."""

    def __init__(
        self,
        service: ArchiveService,
        gate: Gate,
        audit: AuditSink,
        settings: Callable[[], Settings],
        runtime: Runtime,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        """`sock`: a listening socket already bound (a supervisor's, shared by its workers)."""
        self._sock = sock
        self.context = WebContext(
            service, gate, audit, settings, runtime.executor, runtime.gate_executor
        )
        self.app: Starlette = build_app(self.context)
        current = settings()
        self._host, self._port = current.server.host, current.dicomweb.port
        self._listener = WebListener(
            self.app,
            current.dicomweb,
            web_tls_context(lambda: server_context(current)),
            self._slow_client,
            max_pending_per_source=current.server.max_pending_per_source,
            handshake_timeout_s=current.server.handshake_timeout_s,
        )
        self._flusher: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def _slow_client(self, address: str, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.context.refused(address, EventType.ASSOCIATION, reason)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def start(self) -> list[Endpoint]:
        host, port = await self._listener.start(self._host, self._port, sock=self._sock)
        self._flusher = asyncio.get_running_loop().create_task(self.context.flush_forever())
        return [Endpoint(host, port, True, "https")]

    async def stop(self) -> None:
        await self._listener.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
            self._flusher = None
        await self.context.flush_refusals(everything=True)
