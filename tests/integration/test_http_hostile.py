"""The HTTP prober against web servers that misbehave on purpose: raw asyncio servers on
loopback that drip bodies, send endless headers, redirect in circles or off the target, answer
with something that is not HTTP, or lie about their size. Each probe must end within its
bounds, keep its memory bounded, record what it saw, and never raise."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from pacsguard.scan.checks import assess
from pacsguard.scan.http_probe import HttpOptions, probe_http
from pacsguard.scan.model import Observations, Target

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OPTIONS = HttpOptions(
    connect_timeout=2.0, read_timeout=2.0, request_timeout=3.0, total_timeout=20.0
)


async def _read_request(reader: asyncio.StreamReader) -> str:
    """The request line of one GET (headers read and dropped), '' when the client left."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return ""
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def _path(request_line: str) -> str:
    parts = request_line.split(" ")
    return parts[1] if len(parts) > 1 else ""


async def _serve_and_probe(
    handler: Handler, options: HttpOptions = OPTIONS, *, requests: list[str] | None = None
) -> tuple[Observations, float]:
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        obs = await probe_http(Target("127.0.0.1", port, "http"), options)
    finally:
        server.close()
        await server.wait_closed()
    return obs, time.monotonic() - started


def probe(handler: Handler, options: HttpOptions = OPTIONS) -> tuple[Observations, float]:
    return asyncio.run(_serve_and_probe(handler, options))


def _response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _each_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Callable[[str], bytes]
) -> None:
    while line := await _read_request(reader):
        writer.write(answer(_path(line)))
        await writer.drain()


def test_slow_body_ends_at_the_request_deadline() -> None:
    """Headers promise 10 MB, then one byte every 0.5 s: each request ends at its deadline."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.5)

    obs, elapsed = probe(handler)
    assert "http-slow-answer" in obs.anomalies
    assert obs.reachable is True
    # The root's deadline ends the request and a tarpit root ends the probe.
    assert elapsed < OPTIONS.request_timeout + 10
    assert obs.http is not None
    assert [e.status for e in obs.http.endpoints] == [None]


def test_drip_fed_headers_end_at_the_request_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(10_000):
            writer.write(f"X-Drip-{n}: a\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.2)

    options = replace(OPTIONS, total_timeout=6.0)
    obs, elapsed = probe(handler, options)
    assert "http-slow-answer" in obs.anomalies or obs.error is not None
    assert elapsed < options.total_timeout + 5


def test_huge_headers_are_refused_with_bounded_memory() -> None:
    """An endless header block, sent as fast as the socket takes it: h11's buffer bound ends
    it (no 100 MB of headers is ever held)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        chunk = b"".join(f"X-Big-{n}: {'a' * 1000}\r\n".encode() for n in range(100))
        for _ in range(1000):  # up to 100 MB
            writer.write(chunk)
            await writer.drain()

    tracemalloc.start()
    try:
        obs, elapsed = probe(handler)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "http-headers-too-large" in obs.anomalies
    assert elapsed < OPTIONS.total_timeout + 5
    assert obs.http is not None and obs.http.answered is False
    # Everything Python allocated meanwhile (client and this server), against 100 MB offered.
    assert peak < 16 * 1024 * 1024, peak


def test_huge_body_is_cut_at_max_body() -> None:
    """A JSON /system of 50 MB, streamed: read up to max_body, then dropped as incomplete."""
    head = b'{"Version": "1.10.1", "ApiVersion": 1, "Pad": "'
    size = len(head) + 50_000_000 + 2
    block = b"a" * 65536

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await _read_request(reader):
            if _path(line) != "/system":
                writer.write(_response("404 Not Found", {}))
                await writer.drain()
                continue
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode() + head)
            for _ in range(50_000_000 // len(block) + 1):
                writer.write(block)
                await writer.drain()

    options = replace(OPTIONS, max_body=256 * 1024)
    tracemalloc.start()
    try:
        obs, elapsed = probe(handler, options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak
    assert "http-body-too-large" in obs.anomalies
    assert obs.http is not None and obs.http.orthanc is None  # a cut body is not evidence
    assert elapsed < options.total_timeout + 5


def test_redirect_loop_is_ended() -> None:
    def answer(path: str) -> bytes:
        target = "/b" if path == "/a" else "/a"
        return _response("302 Found", {"Location": target})

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _each_request(reader, writer, answer)

    obs, _ = probe(handler)
    assert "http-redirect-loop" in obs.anomalies
    assert obs.http is not None
    followed = [e.path for e in obs.http.endpoints if e.path in ("/", "/a", "/b")]
    assert followed[:3] == ["/", "/a", "/b"]
    assert followed.count("/a") == 1  # the loop was seen, not walked again


def test_endless_redirect_chain_is_bounded() -> None:
    def answer(path: str) -> bytes:
        n = int(path.strip("/") or 0)
        return _response("302 Found", {"Location": f"/{n + 1}"})

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _each_request(reader, writer, answer)

    obs, _ = probe(handler)
    assert "http-redirect-loop" in obs.anomalies
    assert obs.http is not None
    numbered = [e for e in obs.http.endpoints if e.path.strip("/").isdigit() or e.path == "/"]
    assert len(numbered) == OPTIONS.max_redirects + 1


def test_redirect_off_target_is_never_followed() -> None:
    """A redirect to another origin (another loopback port here, another host in the wild) is
    recorded, never followed: the other server sees no connection at all."""
    elsewhere: list[int] = []

    async def main() -> Observations:
        async def other(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            elsewhere.append(1)
            writer.close()

        decoy = await asyncio.start_server(other, "127.0.0.1", 0)
        decoy_port = decoy.sockets[0].getsockname()[1]
        location = f"http://127.0.0.1:{decoy_port}/elsewhere"

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _each_request(
                reader, writer, lambda path: _response("301 Moved", {"Location": location})
            )

        try:
            obs, _ = await _serve_and_probe(handler)
        finally:
            decoy.close()
            await decoy.wait_closed()
        return obs

    obs = asyncio.run(main())
    assert "http-redirect-off-target" in obs.anomalies
    assert elsewhere == []
    assert obs.http is not None
    assert "/elsewhere" not in {e.path for e in obs.http.endpoints}


def test_not_http_is_recorded_and_the_probe_stops() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # an A-ABORT, say
        await writer.drain()

    obs, _ = probe(handler)
    assert "not-http" in obs.anomalies
    assert obs.reachable is True
    assert obs.http is not None and obs.http.answered is False
    assert len(obs.http.endpoints) == 1
    assert assess(obs).findings == ()


def test_silent_server_costs_one_request_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    obs, elapsed = probe(handler)
    assert "http-slow-answer" in obs.anomalies
    assert obs.http is not None and len(obs.http.endpoints) == 1
    assert elapsed < OPTIONS.request_timeout + 5


def test_qido_that_ignores_offset_is_a_lower_bound() -> None:
    """A DICOMweb root that answers the same full page whatever the offset: counted once,
    marked as a lower bound, and paging stops at the first repeat."""
    page = (
        "["
        + ",".join(f'{{"0020000D": {{"vr": "UI", "Value": ["1.2.3.{n}"]}}}}' for n in range(100))
        + "]"
    ).encode()

    def answer(path: str) -> bytes:
        if path.startswith("/dicom-web/studies"):
            return _response("200 OK", {"Content-Type": "application/dicom+json"}, page)
        return _response("404 Not Found", {})

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _each_request(reader, writer, answer)

    obs, _ = probe(handler)
    assert obs.http is not None
    qido = next(q for q in obs.http.dicomweb if q.path == "/dicom-web")
    assert (qido.open, qido.studies, qido.pages, qido.lower_bound) == (True, 100, 2, True)
    assert qido.note == "server ignores the offset parameter"
    report = assess(obs)
    assert "PG-HTTP-QIDO-ANON" in {f.id for f in report.findings}
    assert any("at least 100" in f.title for f in report.findings)


def test_refused_port_is_unreachable() -> None:
    async def main() -> Observations:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return await probe_http(Target("127.0.0.1", port, "http"), OPTIONS)

    obs = asyncio.run(main())
    assert obs.reachable is False
    assert obs.http is not None and obs.http.answered is False
    assert obs.error is not None
    assert assess(obs).findings == ()


@pytest.mark.parametrize(
    "location",
    ["http://[::1", "http://127.0.0.1:99999/x", "/a\x01b", "/caf\u00e9", "//", "http:///x"],
)
def test_locations_that_are_not_urls_are_not_followed(location: str) -> None:
    """Broken or hostile Location values (bad IPv6 literal, port out of range, control bytes,
    raw UTF-8, empty authority) end the redirect chain without an exception, and nothing but
    printable ASCII paths is ever requested."""
    header = location.encode("utf-8")
    sent: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await _read_request(reader):
            sent.append(_path(line))
            writer.write(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nLocation: " + header)
            writer.write(b"\r\n\r\n")
            await writer.drain()

    obs, _ = probe(handler)
    assert obs.http is not None
    # Refused as a URL, or (for "//" and "http:///x", which resolve to this origin) followed
    # here until the loop is seen: either way recorded, bounded, and no exception.
    seen = {"http-redirect-off-target", "not-http", "http-redirect-loop"} & set(obs.anomalies)
    assert seen
    assert all(path.isascii() and path.isprintable() for path in sent)
    assert len(sent) <= OPTIONS.max_redirects + 1 + 20  # the redirect chain, then the rest


def test_hostile_json_becomes_no_evidence() -> None:
    """/system nested 100,000 deep (past the JSON parser's recursion limit), /statistics with
    wrong types: no exception, no Orthanc claimed from the first, no count from the second."""
    deep = b"[" * 100_000 + b"]" * 100_000

    def answer(path: str) -> bytes:
        if path == "/system":
            return _response("200 OK", {"Content-Type": "application/json"}, deep)
        return _response("404 Not Found", {})

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _each_request(reader, writer, answer)

    obs, _ = probe(handler)
    assert "http-bad-json" in obs.anomalies
    assert obs.http is not None and obs.http.orthanc is None

    system = b'{"Version": "1.12.0", "ApiVersion": 20, "DicomAet": 7, "DicomPort": -1}'
    stats = b'{"CountPatients": "12", "CountStudies": true, "CountSeries": -3, "CountInstances": 5}'

    def answer_types(path: str) -> bytes:
        if path == "/system":
            return _response("200 OK", {}, system)
        if path == "/statistics":
            return _response("200 OK", {}, stats)
        if path.startswith("/patients"):
            return _response("200 OK", {}, b'{"not": "a list"}')
        return _response("404 Not Found", {})

    async def handler_types(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _each_request(reader, writer, answer_types)

    obs, _ = probe(handler_types)
    assert obs.http is not None and obs.http.orthanc is not None
    orthanc = obs.http.orthanc
    assert (orthanc.version, orthanc.dicom_aet, orthanc.dicom_port) == ("1.12.0", None, None)
    assert (orthanc.patients, orthanc.studies, orthanc.series, orthanc.instances) == (
        None,
        None,
        None,
        5,
    )
    assert orthanc.patients_listable is False
    assert obs.exposure is None  # no study count, no exposure claimed
    assert "PG-HTTP-ORTHANC-OPEN-API" in {f.id for f in assess(obs).findings}
