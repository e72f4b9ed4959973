"""TLS in front of a DICOM port: is there any, which versions, which certificate, mutual or not.

The scanner observes, it does not trust: every context here has `CERT_NONE` and no host name
check, and the peer certificate is read with `getpeercert(binary_form=True)` (which returns the
DER even when nothing was verified) and decoded by `pacsguard.scan.certificate`.

Legacy versions: OpenSSL 3 (Debian 12) refuses TLS 1.0 and 1.1, SHA-1 handshake signatures and
small keys at its default security level 1/2, and Python deprecates `TLSVersion.TLSv1`/`TLSv1_1`.
To *find out* whether a server still accepts them, each version probe pins `minimum_version` and
`maximum_version` to one version and uses `set_ciphers("DEFAULT:@SECLEVEL=0")`, with the
deprecation warning silenced for that assignment only. A version for which no ClientHello left
(this machine's TLS library cannot offer it, or the connection failed first) is reported as
untested, never as refused. SSL 3.0 is not probed: OpenSSL 3 is built without it.

What is detectable about client certificates, without presenting one:
- requested: the server sent a CertificateRequest. Python exposes handshake messages only
  through CPython's TLS message hook (`SSLContext._msg_callback`, a debugging hook present since
  3.8); without it the answer is `unknown` unless the server refuses us outright.
- required: after a CertificateRequest, the server ends the connection because we sent no
  certificate. In TLS 1.2 that is a handshake failure; in TLS 1.3 the client's handshake has
  already finished when the server's `certificate_required` alert arrives, so the observer reads
  once (up to the read timeout) to see it. A TLS 1.2 handshake is used for this when the server
  accepts 1.2, since it answers without waiting.
- requested but optional: the connection survives without a certificate.
Whether the server would *verify* a certificate we presented is not probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from dataclasses import dataclass
from typing import Any, Final

from pacsguard.dicom.connect import Timeouts  # not client: keeps pydicom out of start-up
from pacsguard.scan.model import CertificateFacts, ClientCertificate, TlsFacts

#: The IANA port for DICOM over TLS (PS3.15 B.1): probed inside TLS first.
DICOM_TLS_PORT: Final = 2762
#: Versions probed, by their short name; the order is the order of the probes.
TLS_VERSIONS: Final[tuple[tuple[str, ssl.TLSVersion], ...]] = (
    ("1.0", ssl.TLSVersion.TLSv1),
    ("1.1", ssl.TLSVersion.TLSv1_1),
    ("1.2", ssl.TLSVersion.TLSv1_2),
    ("1.3", ssl.TLSVersion.TLSv1_3),
)
_VERSION_NAMES: Final = {int(v): name for name, v in TLS_VERSIONS}
_SSL_OBJECT_VERSIONS: Final = {"TLSv1": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}
_HANDSHAKE: Final = 22  # TLS content type (RFC 8446 B.1)
_SERVER_HELLO: Final = 2  # handshake message types (RFC 8446 B.3)
_CERTIFICATE: Final = 11
_CERTIFICATE_REQUEST: Final = 13
_SUPPORTED_VERSIONS: Final = 43  # extension type (RFC 8446 4.2)
_CAN_SEE_MESSAGES: Final = hasattr(ssl.SSLContext, "_msg_callback")


def observing_context(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context that accepts anything: every version from 1.0 (or only `version`),
    every cipher at security level 0, no certificate verification. For observing, never for
    protecting data."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # TLSv1/TLSv1_1 are deprecated in Python: probing for them is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version or ssl.TLSVersion.TLSv1
        context.maximum_version = version or ssl.TLSVersion.TLSv1_3
    return context


@dataclass(slots=True)
class Handshake:
    """What one handshake attempt showed."""

    completed: bool = False
    hello_sent: bool = False
    #: The version in the server's ServerHello (None: no ServerHello seen or not visible).
    server_hello: str | None = None
    certificate_requested: bool = False
    #: For a completed handshake: the server ended the connection without application data.
    closed_after: bool = False
    version: str | None = None
    cipher: str | None = None
    certificate: bytes | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        """The server spoke TLS: a ServerHello came back (or the handshake completed)."""
        return self.completed or self.server_hello is not None


def server_hello_version(message: bytes) -> int:
    """The version a ServerHello message (with its 4-byte handshake header) selects.

    TLS 1.3 keeps 0x0303 in `legacy_version` and names itself in the supported_versions
    extension (RFC 8446 4.1.3, 4.2.1); OpenSSL's message hook reports the record layer's
    version, not this one, so the message is read here. -1 for a message too short to tell.
    """
    if len(message) < 6:
        return -1
    legacy = int.from_bytes(message[4:6], "big")
    offset = 6 + 32  # random
    if len(message) <= offset:
        return legacy
    offset += 1 + message[offset]  # session id
    offset += 2 + 1  # cipher suite, compression method
    if len(message) < offset + 2:
        return legacy
    end = min(len(message), offset + 2 + int.from_bytes(message[offset : offset + 2], "big"))
    offset += 2
    while offset + 4 <= end:
        kind = int.from_bytes(message[offset : offset + 2], "big")
        size = int.from_bytes(message[offset + 2 : offset + 4], "big")
        if kind == _SUPPORTED_VERSIONS and size == 2 and offset + 6 <= end:
            return int.from_bytes(message[offset + 4 : offset + 6], "big")
        offset += 4 + size
    return legacy


def first_certificate(message: bytes, tls13: bool) -> bytes | None:
    """The first (leaf) DER certificate of a Certificate handshake message, header included.

    Read from the message because a handshake that fails later (a server requiring a client
    certificate under TLS 1.2) leaves no `getpeercert()` to ask. TLS 1.3 adds a request context
    before the list (RFC 8446 4.4.2; TLS 1.2: RFC 5246 7.4.2).
    """
    offset = 4
    if tls13:
        if len(message) <= offset:
            return None
        offset += 1 + message[offset]
    offset += 3  # certificate_list length
    if len(message) < offset + 3:
        return None
    size = int.from_bytes(message[offset : offset + 3], "big")
    der = message[offset + 3 : offset + 3 + size]
    return der if size and len(der) == size else None


def _watch(context: ssl.SSLContext, handshake: Handshake) -> None:
    """Record the handshake messages the client sends and receives (see module docstring)."""
    if not _CAN_SEE_MESSAGES:
        return

    def callback(
        conn: object, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes
    ) -> None:
        if content_type != _HANDSHAKE:
            return
        if direction == "write":
            handshake.hello_sent = True
        elif msg_type == _SERVER_HELLO:
            chosen = server_hello_version(bytes(data))
            handshake.server_hello = _VERSION_NAMES.get(chosen, f"0x{chosen:04x}")
        elif msg_type == _CERTIFICATE_REQUEST:
            handshake.certificate_requested = True
        elif msg_type == _CERTIFICATE and handshake.certificate is None:
            handshake.certificate = first_certificate(bytes(data), handshake.server_hello == "1.3")

    setattr(context, "_msg_callback", callback)  # noqa: B010 - private CPython hook, see above


async def handshake(
    host: str,
    port: int,
    timeouts: Timeouts,
    version: ssl.TLSVersion | None = None,
    *,
    wait_for_close: bool = False,
) -> Handshake:
    """Connect, handshake, close. Never raises for the remote's behaviour.

    `wait_for_close` reads once after the handshake (up to the read timeout) to see whether the
    server ends the connection on its own, as a TLS 1.3 server requiring a certificate does.
    """
    result = Handshake()
    context = observing_context(version)
    _watch(context, result)
    try:
        async with asyncio.timeout(timeouts.connect + timeouts.read):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=None, ssl_handshake_timeout=timeouts.read
            )
    except (OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
        result.error = _describe(exc)
        return result
    try:
        result.completed = True
        ssl_object = writer.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            result.version = _SSL_OBJECT_VERSIONS.get(ssl_object.version() or "")
            cipher = ssl_object.cipher()
            result.cipher = cipher[0] if cipher else None
            result.certificate = ssl_object.getpeercert(binary_form=True) or result.certificate
        if result.server_hello is None:
            result.server_hello = result.version
        if wait_for_close:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeouts.read):
                    try:
                        data = await reader.read(1)
                        result.closed_after = not data
                    except (OSError, ssl.SSLError) as exc:
                        result.closed_after = True
                        result.error = _describe(exc)
    finally:
        # Abort, not close: a graceful TLS close waits up to 30 s for the server's close_notify
        # and holds the TCP connection meanwhile, which stalls servers that take one
        # connection at a time (Orthanc's DICOM-TLS does).
        writer.transport.abort()
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return exc.__class__.__name__


async def observe_tls(host: str, port: int, timeouts: Timeouts) -> TlsFacts | None:
    """Everything `TlsFacts` holds about `host:port`, or None when it does not speak TLS."""
    first = await handshake(host, port, timeouts)
    if not first.answered:
        return None
    accepted: list[str] = []
    refused: list[str] = []
    untested: list[str] = []
    tls12: Handshake | None = None
    for name, version in TLS_VERSIONS:
        if name == first.server_hello and first.completed:
            accepted.append(name)
            continue
        probe = await handshake(host, port, timeouts, version)
        if name == "1.2":
            tls12 = probe
        if probe.answered and probe.server_hello in (name, None):
            accepted.append(name)
        elif _CAN_SEE_MESSAGES and not probe.hello_sent:
            untested.append(name)
        else:
            refused.append(name)
    client = await _client_certificate(host, port, timeouts, first, tls12, accepted)
    der = first.certificate or (tls12.certificate if tls12 else None)
    # Imported here: `cryptography.x509` is only worth loading once a TLS server answered.
    from pacsguard.scan.certificate import CertificateUnreadable, certificate_facts

    certificate: CertificateFacts | None = None
    certificate_error: str | None = "no certificate received"
    if der is not None:
        try:
            certificate, certificate_error = certificate_facts(der), None
        except CertificateUnreadable as exc:
            certificate_error = str(exc)
    return TlsFacts(
        versions_accepted=tuple(accepted),
        versions_refused=tuple(refused),
        versions_untested=tuple(untested),
        negotiated_version=first.version,
        cipher=first.cipher,
        client_certificate=client,
        certificate=certificate,
        certificate_error=certificate_error,
    )


async def _client_certificate(
    host: str,
    port: int,
    timeouts: Timeouts,
    first: Handshake,
    tls12: Handshake | None,
    accepted: list[str],
) -> ClientCertificate:
    """Classify the server's client-certificate policy (see the module docstring)."""
    if not first.completed and first.certificate_requested:
        return ClientCertificate.REQUIRED  # a TLS <= 1.2 handshake ended after the request
    if not _CAN_SEE_MESSAGES:
        return ClientCertificate.UNKNOWN if first.completed else ClientCertificate.REQUIRED
    if not first.certificate_requested:
        return ClientCertificate.NOT_REQUESTED
    if "1.2" in accepted:
        if tls12 is None:  # 1.2 was the first handshake's version: it completed
            return ClientCertificate.REQUESTED
        return ClientCertificate.REQUESTED if tls12.completed else ClientCertificate.REQUIRED
    again = await handshake(host, port, timeouts, wait_for_close=True)
    if not again.completed or again.closed_after:
        return ClientCertificate.REQUIRED
    return ClientCertificate.REQUESTED
