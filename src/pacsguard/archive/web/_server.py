"""The DICOMweb listener: uvicorn serving the app over TLS on the archive's event loop.

uvicorn runs as a task on the loop the DIMSE front end owns (one loop, one process: uvloop's,
see `archive.runtime`), with httptools as its HTTP parser (uvicorn's C parser, rather than
h11, its pure Python one), on a socket we bind ourselves (so that a port in use is a
ConfigError here, not uvicorn's `sys.exit`), with the archive's TLS context (BCP 195, the
first-run server certificate; `security.tls`).

Slow clients: one source address holds at most `[server] max_pending_per_source` connections
that have not sent a request head yet (more are closed at once, as on the DIMSE side); uvicorn
bounds the connections it serves (`limit_concurrency`: 503 past `[dicomweb] max_connections`)
and idle keep-alive connections, but not the time a client takes to send its headers.
`_Deadline` adds that: a connection that has not sent a complete request head within
`header_timeout_s` of connecting (or of its last response) gets 408 and is closed, and the
refusal is audited; a request head larger than `MAX_HEAD_BYTES` gets 431 (httptools has no
bound of its own). Bodies are timed by the handlers (`body_timeout_s` between chunks). The
TLS handshake comes before all of that (the loop's TLS layer runs it before the protocol sees
the connection): `_Server` passes the listener a handshake deadline (`[server]
handshake_timeout_s`, at most `header_timeout_s`, as the DIMSE listener bounds its own by
the pre-association timeout) instead of the loop's default 60 s, which uvicorn leaves in
place; a client that connects and stalls the handshake is dropped when it expires. Such
connections do not count as pending yet. Access logs are off: URLs carry query values
(patient names, IDs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Final

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pacsguard.archive.config import DicomWebSettings
from pacsguard.errors import ConfigError

log = logging.getLogger(__name__)

_START_TIMEOUT: Final = 15.0
_STOP_TIMEOUT: Final = 15.0
#: Largest request head (request line and headers) accepted, in bytes; larger: 400.
MAX_HEAD_BYTES: Final = 16 * 1024
_TIMEOUT_BODY: Final = b"408: request headers not received in time\n"
_HEAD_TOO_LARGE: Final = b"431: request headers larger than 16384 bytes\n"


def _deadline_protocol(
    header_timeout_s: float, max_pending_per_source: int, on_refusal: Callable[[str, str], None]
) -> type[HttpToolsProtocol]:
    #: Connections per source address that have not sent their first request head yet.
    pending: Counter[str] = Counter()

    class _Deadline(HttpToolsProtocol):
        """uvicorn's httptools protocol, with a deadline for each request head and a bound on the
        connections one source holds before its first request."""

        _head_deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _pending_source: str | None = None
        _refused = False

        def data_received(self, data: bytes) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            self._head_bytes = self._head_bytes + len(data) if waiting else 0
            super().data_received(data)
            still_waiting = self.cycle is None or self.cycle.response_complete
            if not still_waiting:
                self._release()
            elif self.transport.is_closing() and not self._refused:
                # httptools found the head malformed; uvicorn answered 400
                self._refused = True
                on_refusal(self.client[0] if self.client else "", "400: bad request head")
            if (
                still_waiting
                and self._head_bytes > MAX_HEAD_BYTES
                and not self.transport.is_closing()
            ):
                # httptools has no limit of its own on the size of a request head.
                self._refuse(b"431 Request Header Fields Too Large", _HEAD_TOO_LARGE)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # Nagle off, as on the DIMSE side: asyncio sets TCP_NODELAY only on sockets made
            # with proto IPPROTO_TCP, and `socket.create_server` makes them with proto 0, so
            # uvicorn's separate head and body writes waited for the client's delayed ACK
            # (about 40 ms on every response, measured by benchmarks/dicomweb).
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)
            source = self.client[0] if self.client else ""
            if pending[source] >= max_pending_per_source:
                transport.abort()  # as the DIMSE side does: idle sockets cannot exhaust us
                on_refusal(source, "too many connections without a request")
                return
            pending[source] += 1
            self._pending_source = source
            self._arm()

        def _release(self) -> None:
            source, self._pending_source = self._pending_source, None
            if source is not None:
                pending[source] -= 1
                if pending[source] <= 0:
                    del pending[source]

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._release()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_bytes = 0
            self._head_deadline = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _expired(self) -> None:
            self._head_deadline = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served: its body has its own timeout
            if self.transport.is_closing():
                return
            self._refuse(b"408 Request Timeout", _TIMEOUT_BODY)

        def _refuse(self, status: bytes, body: bytes) -> None:
            self._disarm()
            self._refused = True
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            self.transport.close()
            on_refusal(self.client[0] if self.client else "", body.decode().strip())

    return _Deadline


class _Server(uvicorn.Server):
    """uvicorn's server with a TLS handshake deadline on its listening sockets.

    uvicorn's `startup` calls `loop.create_server(..., ssl=...)` without
    `ssl_handshake_timeout`; this `startup` does what uvicorn's does for explicitly passed
    sockets (the only way we start it), with the deadline. uvicorn is pinned in
    constraints.txt; tests/integration/web/test_web_handshake.py fails if this drifts."""

    def __init__(self, config: uvicorn.Config, handshake_timeout_s: float) -> None:
        super().__init__(config)
        self._handshake_timeout_s = handshake_timeout_s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            raise ValueError("the DICOMweb listener binds its own socket")
        await self.lifespan.startup()  # "off": nothing to run, but uvicorn's order kept
        config = self.config  # loaded by `serve`
        loop = asyncio.get_running_loop()

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )
            return protocol

        self.servers = [
            await loop.create_server(
                create_protocol,
                sock=sock,
                ssl=config.ssl,
                ssl_handshake_timeout=self._handshake_timeout_s if config.ssl else None,
                backlog=config.backlog,
            )
            for sock in sockets
        ]
        self.started = True


class WebListener:
    """One uvicorn server on the running loop: `start` binds and serves, `stop` ends it."""

    def __init__(
        self,
        app: ASGIApp,
        settings: DicomWebSettings,
        tls: ssl.SSLContext,
        on_slow_client: Callable[[str, str], None],
        *,
        max_pending_per_source: int = 32,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        self._max_pending = max_pending_per_source
        #: Seconds a client has for its TLS handshake (the head deadline starts after it).
        self._handshake_timeout_s = min(handshake_timeout_s, settings.header_timeout_s)
        self._app = app
        self._settings = settings
        self._tls = tls
        self._on_slow_client = on_slow_client
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, host: str, port: int, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Bind host:port (or serve on `sock`, bound already) and serve; (host, port) bound.
        ConfigError when it cannot bind."""
        if sock is None:
            sock = bind_web_socket(host, port)
        settings = self._settings
        tls = self._tls
        config = uvicorn.Config(
            self._app,
            http=_deadline_protocol(
                settings.header_timeout_s, self._max_pending, self._on_slow_client
            ),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=settings.max_connections,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
            ssl_context_factory=lambda _config, _default: tls,
        )
        server = _Server(config, self._handshake_timeout_s)
        self._server = server
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        async with asyncio.timeout(_START_TIMEOUT):
            while not server.started:
                if self._task.done():
                    self._task.result()
                    raise ConfigError("the DICOMweb listener stopped while starting")
                await asyncio.sleep(0.01)
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        """Stop accepting, let answers under way finish (uvicorn's graceful shutdown, 2 s),
        then drop every connection still open, so that none outlives the loop."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT)
        except (TimeoutError, Exception):
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for connection in list(server.server_state.connections):
            # A TLS connection that uvicorn closed waits for the client's close_notify: abort.
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)  # let the aborted transports run connection_lost
        self._server = self._task = None


def bind_web_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port for DICOMweb; ConfigError when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=256)
    except OSError as exc:
        raise ConfigError(
            f"[dicomweb] port = {port} on {host}: cannot listen ({exc.strerror}); choose "
            "another port or stop what uses it"
        ) from None


def web_tls_context(context_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """The DIMSE listener's hardened context, for HTTPS: HTTP/1.1 by ALPN, and no client
    certificate request (HTTP principals prove themselves with tokens; a browser would
    otherwise prompt its user for a certificate)."""
    context = context_factory()
    context.set_alpn_protocols(["http/1.1"])
    context.verify_mode = ssl.CERT_NONE
    return context
