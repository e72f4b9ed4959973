"""Bad input over HTTP (issue 10, deliverable 6): every refusal is a 4xx with a readable body,
stores nothing, is audited, and leaves the archive serving other clients. Loops are bounded;
everything stays on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pacsguard.lab.synth import generate_archive, write_files

from ._multipart import related_body
from .conftest import WebArchive, start_web


@pytest.fixture
def small(tmp_path: Path) -> Iterator[WebArchive]:
    """DICOMweb with a 64 KiB body limit and a 1 s deadline for request heads."""
    web = start_web(
        tmp_path,
        **{
            "dicomweb.max_body_bytes": 64 * 1024,
            "dicomweb.header_timeout_s": 1.0,
            "dicomweb.body_timeout_s": 2.0,
            "server.max_pending_per_source": 8,
        },
    )
    try:
        yield web
    finally:
        web.archive.stop()


@pytest.fixture
def one_file(tmp_path: Path) -> bytes:
    directory = tmp_path / "lab"
    directory.mkdir()
    return write_files(generate_archive(seed=3, patients=1), directory)[0].read_bytes()


def stored_count(web: WebArchive) -> int:
    with web.client() as client:
        return len(client.get("/instances").json())


def refusals(web: WebArchive) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in web.audit_lines()]
    return [e for e in lines if e["detail"].get("result") == "refused"]


def assert_refused(answer: httpx.Response, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert words in answer.text


def test_missing_or_wrong_tokens_are_401_and_audited(small: WebArchive) -> None:
    with small.client(None) as client:
        for authorization in (
            None,
            "Basic YWRtaW46YWRtaW4=",
            "Bearer pgt_000000000000_x",
            "Bearer e.e.e",
        ):
            headers = {} if authorization is None else {"Authorization": authorization}
            answer = client.get("/studies", headers=headers)
            assert_refused(answer, 401, "Bearer")
            assert answer.headers["www-authenticate"].startswith("Bearer")
    lines = [json.loads(line) for line in small.audit_lines()]
    rejected = [
        e for e in lines if e["event"] == "authentication" and e["detail"]["result"] == "rejected"
    ]
    assert len({e["detail"]["reason"] for e in rejected}) == 4  # by the gate, with the reason
    assert all(e["detail"]["transport"] == "http" for e in rejected)


def test_guessing_tokens_locks_the_source_out(small: WebArchive) -> None:
    """The gate's lockout, shared with DIMSE: 5 failures from a source (the default), then
    even a valid token from there is refused; another source is not affected."""
    token = small.token("reader")
    with small.client(None) as client:
        for n in range(5):
            guess = client.get("/studies", headers={"Authorization": f"Bearer pgt_{n:012d}_x"})
            assert guess.status_code == 401
        locked = client.get("/studies", headers={"Authorization": f"Bearer {token}"})
        assert locked.status_code == 401
    other = httpx.HTTPTransport(local_address="127.0.0.2", verify=small.tls())
    with small.client(None, transport=other) as client:
        fine = client.get("/studies", headers={"Authorization": f"Bearer {token}"})
        assert fine.status_code == 200


def test_malformed_and_mistyped_bodies_store_nothing(small: WebArchive, one_file: bytes) -> None:
    body, content_type = related_body([one_file])
    truncated = body[: len(body) // 2]
    cases = [
        (truncated, content_type, 400, "closing boundary"),
        (b"--x\r\nContent-Type: application/dicom\r\n\r\n" + one_file, content_type, 400, ""),
        (body, "application/json", 415, "multipart/related"),
        (body, content_type.replace("application/dicom", "application/dicom+json"), 415, ""),
        (body, 'multipart/related; type="application/dicom"', 400, "boundary"),
        (body, None, 415, "Content-Type required"),
    ]
    with small.client() as client:
        for content, ctype, status, words in cases:
            headers = {} if ctype is None else {"Content-Type": ctype}
            answer = client.post("/studies", content=content, headers=headers)
            assert_refused(answer, status, words)
    assert stored_count(small) == 0
    assert sum(1 for e in refusals(small) if e["event"] == "store") >= len(cases) - 1
    with small.client() as client:  # and it still takes a good request
        assert (
            client.post(
                "/studies", content=body, headers={"Content-Type": content_type}
            ).status_code
            == 200
        )


def test_oversized_bodies_are_413_while_streaming(small: WebArchive, one_file: bytes) -> None:
    big, content_type = related_body([one_file] * 100)  # > 64 KiB
    assert len(big) > 64 * 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the streamed count can refuse
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    with small.client() as client:
        declared = client.post("/studies", content=big, headers={"Content-Type": content_type})
        streamed = client.post("/studies", content=chunks(), headers={"Content-Type": content_type})
    assert_refused(declared, 413, "larger than")
    assert_refused(streamed, 413, "larger than")
    assert "transfer-encoding" not in declared.request.headers
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert stored_count(small) == 0


def test_invalid_query_parameters_and_uids_are_400(small: WebArchive) -> None:
    bad = [
        ("/studies", {"limit": "-1"}, "limit"),
        ("/studies", {"limit": "many"}, "limit"),
        ("/studies", {"offset": "1e9"}, "offset"),
        ("/studies", {"NoSuchAttribute": "1"}, "not a DICOM attribute"),
        ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
        ("/studies", {"includefield": "0010ZZZZ"}, "not a DICOM attribute"),
        ("/studies", {"StudyInstanceUID": "1.2.*"}, "query cannot be run"),
        ("/studies", {"StudyDate": "2020-01-01"}, "query cannot be run"),
        ("/studies/1.2..3", {}, "not a valid UID"),
        ("/studies/...", {}, "not a valid UID"),
        ("/studies/1.2.3/series/a.b", {}, "not a valid UID"),
        ("/studies/" + "1" * 65, {}, "not a valid UID"),
        ("/studies/1.2/series/1.3/instances/1.4/frames/0", {}, "frame"),
    ]
    with small.client() as client:
        for path, params, words in bad:
            assert_refused(client.get(path, params=params), 400, words)
        # an encoded slash never reaches a handler as a UID
        traversal = client.get("/studies/..%2F..%2Fetc%2Fpasswd")
        assert traversal.status_code in (400, 404)
    # httpx resolves dot segments itself: send them as a client that does not
    connection = http.client.HTTPSConnection(
        "127.0.0.1", int(small.base_url.rsplit(":", 1)[1]), context=small.tls(), timeout=10
    )
    try:
        connection.request(
            "GET", "/studies/..", headers={"Authorization": f"Bearer {small.token()}"}
        )
        raw = connection.getresponse()
        assert raw.status == 400
        assert b"not a valid UID" in raw.read()
    finally:
        connection.close()
    # identical refusals are summed per window (RefusalTally): each kind has its line now
    reasons = " ".join(str(e["detail"]["reason"]) for e in refusals(small))
    for _, _, words in bad:
        assert words in reasons or words == "query cannot be run", words


def test_slow_clients_are_cut_off_and_others_still_served(small: WebArchive) -> None:
    host, port = small.web_endpoint
    context = ssl.create_default_context(cafile=str(small.ca_file))
    slow: list[ssl.SSLSocket] = []
    try:
        for _ in range(12):  # bounded; [server] max_pending_per_source is 8 here
            sock = context.wrap_socket(
                socket.create_connection((host, port), timeout=5), server_hostname=host
            )
            sock.sendall(b"GET /studies HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            slow.append(sock)
        started = time.monotonic()
        other = httpx.HTTPTransport(local_address="127.0.0.2", verify=small.tls())
        with small.client(transport=other) as client:  # another source address is served
            assert client.get("/studies").status_code == 200
        assert time.monotonic() - started < 5
        answers = []
        for sock in slow:
            try:
                answers.append(sock.recv(4096))
            except OSError:
                answers.append(b"")
        timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) == 8, [a[:40] for a in answers]
        assert all(b"request headers not received in time" in a for a in timed_out)
        assert answers.count(b"") == 4  # past the per-source cap: closed at once
    finally:
        for sock in slow:
            sock.close()
    time.sleep(0.2)
    reasons = [str(e["detail"]["reason"]) for e in refusals(small)]
    assert any("not received in time" in r for r in reasons), "slow clients are audited"
    assert "too many connections without a request" in reasons
    with small.client() as client:  # and the slow source may come back once they are gone
        assert client.get("/studies").status_code == 200


def test_a_stalled_body_is_408_and_stores_nothing(small: WebArchive, one_file: bytes) -> None:
    body, content_type = related_body([one_file])

    def stall() -> Iterator[bytes]:
        yield body[:100]
        time.sleep(3.5)  # longer than body_timeout_s
        yield body[100:]

    with small.client() as client:
        try:
            answer = client.post(
                "/studies", content=stall(), headers={"Content-Type": content_type}
            )
            assert_refused(answer, 408, "no request data")
        except httpx.TransportError:
            pass  # the server answered and closed while we were still sending: also a refusal
    assert stored_count(small) == 0
    assert any(e["detail"]["reason"].startswith("408") for e in refusals(small))


def test_oversized_headers_are_refused(small: WebArchive) -> None:
    with small.client() as client:
        answer = client.get("/studies", headers={"X-Filler": "a" * 40_000})
    # h11's own bound (400) or ours (431), depending on how the head arrived
    assert answer.status_code in (400, 431), answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    host, port = small.web_endpoint
    context = ssl.create_default_context(cafile=str(small.ca_file))
    with context.wrap_socket(
        socket.create_connection((host, port), timeout=5), server_hostname=host
    ) as sock:  # a head that never ends, sent in big writes: cut off at the limit
        try:
            sock.sendall(b"GET /studies HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 100_000)
            answer_bytes = sock.recv(4096)
        except OSError:  # answered and closed while we were still sending
            answer_bytes = b""
    # h11 (400) or our own bound (431) refuses it, whichever sees it first
    assert answer_bytes[:12] in (b"", b"HTTP/1.1 400", b"HTTP/1.1 431"), answer_bytes[:80]
    time.sleep(0.2)
    reasons = [str(e["detail"]["reason"]) for e in refusals(small)]
    assert any(r.startswith(("431:", "400:")) for r in reasons), reasons
    with small.client() as client:
        assert client.get("/studies").status_code == 200
