"""The syslog sink against a tiny RFC 5425 collector on 127.0.0.1 (TLS, octet counting)."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.patients import PATIENT_REF, PatientKey
from pacsguard.archive.audit.syslog import SyslogSink, format_rfc5424, frame
from pacsguard.archive.config import DataLayout, SyslogSettings
from pacsguard.archive.security.bootstrap import initialize

WHEN = datetime(2025, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
LOGIN = AuditEvent(
    EventType.AUTHENTICATION,
    EventAction.EXECUTE,
    EventOutcome.SUCCESS,
    (Participant(ae_title="CT1", address="198.51.100.5"),),
)
DENIED = AuditEvent(
    EventType.POLICY_DENIAL,
    EventAction.EXECUTE,
    EventOutcome.SERIOUS_FAILURE,
    (Participant(ae_title="CT1", address="198.51.100.5"),),
)
HEADER = re.compile(
    rb"^<(?P<pri>\d+)>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) "
    rb"(?P<msgid>\S+) - \xef\xbb\xbf"
)


def _read_frame(conn: ssl.SSLSocket) -> bytes:
    length = b""
    while not length.endswith(b" "):
        byte = conn.recv(1)
        if not byte:
            raise ConnectionError("collector: peer closed mid-frame")
        length += byte
    remaining = int(length)
    data = b""
    while len(data) < remaining:
        chunk = conn.recv(remaining - len(data))
        if not chunk:
            raise ConnectionError("collector: peer closed mid-frame")
        data += chunk
    return data


class Collector:
    """Accept one TLS connection and collect `expected` frames."""

    def __init__(self, context: ssl.SSLContext, expected: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.expected = expected
        self.frames: list[bytes] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(10)
                while len(self.frames) < self.expected:
                    self.frames.append(_read_frame(conn))
        except (OSError, ValueError) as exc:
            self.error = exc

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


@pytest.fixture(scope="module")
def collector_pki(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    """A CA and a certificate for 127.0.0.1, made the way `pacsguard init` makes them."""
    return initialize(tmp_path_factory.mktemp("collector")).layout


@pytest.fixture
def collector_context(collector_pki: DataLayout) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(collector_pki.server_cert, collector_pki.server_key)
    return context


@pytest.fixture
def ca_file(collector_pki: DataLayout) -> Path:
    return collector_pki.ca_cert


@pytest.fixture
def sinks() -> Iterator[list[SyslogSink]]:
    made: list[SyslogSink] = []
    yield made
    for sink in made:
        sink.close(timeout=2)


def test_message_format() -> None:
    message = format_rfc5424(
        LOGIN, WHEN, hostname="pacs host", app_name="pacsguard", source_id="PACSGUARD", procid=42
    )
    match = HEADER.match(message)
    assert match is not None
    assert match["pri"] == b"85"  # facility 10 (authpriv) * 8 + severity 5 (notice)
    assert match["time"] == b"2025-03-01T08:00:00.123456Z"
    assert match["host"] == b"pacs_host"  # no spaces inside a header field
    assert (match["app"], match["proc"], match["msgid"]) == (b"pacsguard", b"42", b"IHE+RFC-3881")
    body = ET.fromstring(message[match.end() :])
    assert body.tag == "AuditMessage"
    warning = format_rfc5424(DENIED, WHEN, hostname="h", app_name="a", source_id="P", procid=1)
    assert warning.startswith(b"<84>1 ")


def test_a_syslog_copy_names_a_patient_by_pseudonym_only() -> None:
    """The event holds the sealed Patient ID; what leaves the machine holds neither it nor
    the ID, only the pseudonym."""
    patients = PatientKey(bytes(range(32)))
    reference = patients.reference("PID-77")
    store = AuditEvent(
        EventType.STORE,
        EventAction.CREATE,
        EventOutcome.SUCCESS,
        (Participant(ae_title="CT1", address="198.51.100.5"),),
        objects=(("study", "1.2.3"), (PATIENT_REF, reference)),
    )
    message = format_rfc5424(store, WHEN, hostname="h", app_name="a", source_id="P", procid=1)
    assert b"PID-77" not in message
    assert reference.partition(".")[2].encode() not in message
    match = HEADER.match(message)
    assert match is not None
    ids = [
        o.get("ParticipantObjectID")
        for o in ET.fromstring(message[match.end() :]).findall("ParticipantObjectIdentification")
    ]
    assert ids == ["1.2.3", patients.pseudonym("PID-77")]


def test_octet_counting_frame() -> None:
    assert frame(b"<85>1 abc") == b"9 <85>1 abc"
    message = "<85>1 é".encode()
    assert frame(message).startswith(f"{len(message)} ".encode())


def test_collector_receives_rfc5424_frames_over_tls(
    collector_context: ssl.SSLContext, ca_file: Path, sinks: list[SyslogSink]
) -> None:
    collector = Collector(collector_context, expected=2)
    settings = SyslogSettings(host="127.0.0.1", port=collector.port, tls=True, ca_file=ca_file)
    sink = SyslogSink(settings, source_id="PACSGUARD", hostname="archive1")
    sinks.append(sink)
    sink.emit(LOGIN)
    sink.emit(DENIED)
    sink.close()
    collector.close()
    assert collector.error is None
    assert len(collector.frames) == 2
    first = collector.frames[0]
    match = HEADER.match(first)
    assert match is not None
    assert (match["pri"], match["host"], match["msgid"]) == (b"85", b"archive1", b"IHE+RFC-3881")
    message = ET.fromstring(first[match.end() :])
    event_id = message.find("EventIdentification/EventID")
    assert event_id is not None and event_id.get("csd-code") == "110114"
    assert collector.frames[1].startswith(b"<84>1 ")
    assert sink.sent == 2 and sink.dropped == 0


def test_unreachable_collector_never_blocks_and_is_logged(
    caplog: pytest.LogCaptureFixture, sinks: list[SyslogSink], ca_file: Path
) -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = SyslogSettings(host="127.0.0.1", port=port, tls=True, ca_file=ca_file)
    sink = SyslogSink(settings, source_id="PACSGUARD", connect_timeout=1.0)
    sinks.append(sink)
    caplog.set_level(logging.WARNING, logger="pacsguard.archive.audit.syslog")
    started = time.monotonic()
    for _ in range(20):
        sink.emit(LOGIN)
    assert time.monotonic() - started < 0.5
    sink.close(timeout=10)
    assert sink.sent == 0
    assert sink.dropped == 20
    assert any("event dropped" in record.getMessage() for record in caplog.records)


def test_collector_with_an_untrusted_certificate_gets_nothing(
    collector_context: ssl.SSLContext, tmp_path: Path, sinks: list[SyslogSink]
) -> None:
    other = initialize(tmp_path / "other").layout.ca_cert
    collector = Collector(collector_context, expected=1)
    settings = SyslogSettings(host="127.0.0.1", port=collector.port, tls=True, ca_file=other)
    sink = SyslogSink(settings, source_id="PACSGUARD", connect_timeout=2.0)
    sinks.append(sink)
    sink.emit(LOGIN)
    sink.close(timeout=10)
    collector.close()
    assert collector.frames == []
    assert sink.sent == 0 and sink.dropped == 1
