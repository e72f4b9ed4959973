"""Optional audit export to a syslog collector: RFC 5424 messages over TLS (RFC 5425).

Frames use octet counting (RFC 5425 4.3: ``MSG-LEN SP SYSLOG-MSG``). The message is the IHE ATNA
form: facility 10 (security/authorization), MSGID ``IHE+RFC-3881``, and the DICOM PS3.15 A.5
AuditMessage XML as the body, which names a patient by keyed pseudonym only (`audit.export`,
`audit.patients`): neither the Patient ID nor its sealed copy leaves the machine. `emit` only
queues: a slow or absent collector never blocks the archive; failures are logged and the event
dropped (the hash-chained local log still has it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import socket
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from pacsguard.archive.audit.events import AuditEvent, EventOutcome
from pacsguard.archive.audit.export import message_bytes
from pacsguard.archive.config import SyslogSettings
from pacsguard.archive.security.tls import client_context

log = logging.getLogger(__name__)

FACILITY_AUTH: Final = 10  # security/authorization messages (RFC 5424 Table 1)
SEVERITY_NOTICE: Final = 5
SEVERITY_WARNING: Final = 4
MSGID_ATNA: Final = "IHE+RFC-3881"
_BOM: Final = b"\xef\xbb\xbf"
_NOT_PRINTABLE: Final = re.compile(r"[^\x21-\x7e]")


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, bounded, or the nil value."""
    cleaned = _NOT_PRINTABLE.sub("_", value)[:limit]
    return cleaned or "-"


def format_rfc5424(
    event: AuditEvent,
    moment: datetime,
    *,
    hostname: str,
    app_name: str,
    source_id: str,
    procid: int | None = None,
) -> bytes:
    """One RFC 5424 message whose body is the event's AuditMessage XML."""
    severity = SEVERITY_NOTICE if event.outcome is EventOutcome.SUCCESS else SEVERITY_WARNING
    stamp = moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = " ".join(
        (
            f"<{FACILITY_AUTH * 8 + severity}>1",
            stamp,
            _field(hostname, 255),
            _field(app_name, 48),
            _field(str(os.getpid() if procid is None else procid), 128),
            MSGID_ATNA,
            "-",  # no structured data
        )
    )
    return header.encode("ascii") + b" " + _BOM + message_bytes(event, moment, source_id)


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting framing."""
    return str(len(message)).encode("ascii") + b" " + message


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SyslogSink:
    """An `AuditSink` that ships events to a collector from a background thread."""

    def __init__(
        self,
        settings: SyslogSettings,
        *,
        source_id: str,
        context: ssl.SSLContext | None = None,
        hostname: str | None = None,
        queue_size: int = 10_000,
        connect_timeout: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if settings.host is None:
            raise ValueError("SyslogSink needs [audit.syslog] host")
        self._host = settings.host
        self._port = settings.port
        self._app_name = settings.app_name
        self._source_id = source_id
        self._hostname = hostname or socket.gethostname()
        self._timeout = connect_timeout
        self._clock = clock
        self._context: ssl.SSLContext | None = None
        if settings.tls:
            self._context = context or client_context(settings.ca_file)
        self._queue: queue.Queue[tuple[AuditEvent, datetime] | None] = queue.Queue(queue_size)
        self._socket: socket.socket | None = None
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def emit(self, event: AuditEvent) -> None:
        """Queue the event; never blocks. A full queue drops the event with a log line."""
        try:
            self._queue.put_nowait((event, self._clock()))
        except queue.Full:
            self.dropped += 1
            log.warning("audit syslog queue full; event dropped (%d so far)", self.dropped)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to `timeout`), then stop the thread and the connection."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event, moment = item
            message = format_rfc5424(
                event,
                moment,
                hostname=self._hostname,
                app_name=self._app_name,
                source_id=self._source_id,
            )
            self._send(frame(message))
        self._disconnect()

    def _send(self, data: bytes) -> None:
        for attempt in (1, 2):  # one reconnect: the collector may have closed an idle link
            try:
                if self._socket is None:
                    self._socket = self._connect()
                self._socket.sendall(data)
                self.sent += 1
                return
            except (OSError, ssl.SSLError) as exc:
                self._disconnect()
                if attempt == 2:
                    self.dropped += 1
                    log.warning(
                        "audit syslog to %s:%d failed (%s); event dropped (%d so far)",
                        self._host,
                        self._port,
                        exc,
                        self.dropped,
                    )

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self._host, self._port), timeout=self._timeout)
        if self._context is None:
            return raw
        try:
            return self._context.wrap_socket(raw, server_hostname=self._host)
        except BaseException:
            raw.close()
            raise

    def _disconnect(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
