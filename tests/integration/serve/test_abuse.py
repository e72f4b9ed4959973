"""Abuse does not take the archive down (issue 9, deliverable 4), and Nagle costs a client
nothing. Loopback only: "another source" is 127.0.0.2, which reaches the archive's 127.0.0.1
listener; every loop is bounded in count and time."""

from __future__ import annotations

import copy
import json
import socket
import ssl
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import CTImageStorage, Verification

from pacsguard.archive.app import Endpoint, RunningArchive
from pacsguard.archive.selfcheck import stranger_tls_context
from pacsguard.dicom import uids
from pacsguard.dicom.dimse import MessageAssembler, encode_message
from pacsguard.dicom.ul import ProposedContext, RawPdu, encode_associate_rq

from .conftest import TESTER, StartArchive, free_port, make_data_dir, start_serve
from .test_serve import good_dataset

OTHER_SOURCE = "127.0.0.2"
#: A second peer, registered at the other loopback address.
TESTER2 = """
[[ae]]
ae_title = "TESTER2"
auth = "address"
address = "127.0.0.2"
permissions = ["echo", "store", "find"]
"""


def plain(archive: RunningArchive) -> Endpoint:
    return next(e for e in archive.endpoints if not e.tls)


def audit_events(archive: RunningArchive) -> list[dict[str, Any]]:
    path = Path(archive.settings.audit.log_path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def associate(
    archive: RunningArchive,
    calling: str = "TESTER",
    *,
    source: str = "127.0.0.1",
    called: str = "PACSGUARD",
    identity: UserIdentityNegotiation | None = None,
) -> Association:
    endpoint = plain(archive)
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate(
        endpoint.host,
        endpoint.port,
        ae_title=called,
        bind_address=(source, 0),
        ext_neg=[identity] if identity is not None else None,
    )


@contextmanager
def held(associations: list[Association]) -> Iterator[list[Association]]:
    try:
        yield associations
    finally:
        for assoc in associations:
            if assoc.is_established:
                assoc.release()


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert rj is not None
    return int(rj.result or 0), int(rj.result_source or 0), int(rj.diagnostic or 0)


def idle_connections(endpoint: Endpoint, count: int) -> list[socket.socket]:
    """`count` connections from 127.0.0.1 that never send a whole association request: half
    say nothing, half send the first bytes of a PDU header and stop."""
    opened: list[socket.socket] = []
    try:
        for i in range(count):
            sock = socket.create_connection(
                (endpoint.host, endpoint.port), timeout=5, source_address=("127.0.0.1", 0)
            )
            opened.append(sock)
            if i % 2:
                with suppress(OSError):  # refused already: the server closed it
                    sock.sendall(struct.pack(">BB", 0x01, 0x00))
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_connections_from_one_source_do_not_keep_a_peer_out(
    start: StartArchive, tmp_path: Path
) -> None:
    archive = start(
        make_data_dir(tmp_path / "d", TESTER + TESTER2),
        **{"server.pre_association_timeout_s": 2.0},
    )
    pending_cap = archive.settings.server.max_pending_per_source
    idle = idle_connections(plain(archive), 300)
    try:
        started = time.monotonic()
        with held([associate(archive, "TESTER2", source=OTHER_SOURCE)]) as (assoc,):
            elapsed = time.monotonic() - started
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
        assert elapsed < 1.0, f"association took {elapsed:.2f}s"
        # The connections that were let in (pending_cap of them, more if some timed out
        # while the 300 were still being opened) are dropped at the deadline; all the others
        # were closed at once.
        assert all(closed_by_server(sock, 8.0) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    archive.stop()  # closes the last audit windows
    events = audit_events(archive)
    refused = [e for e in events if e["detail"].get("reason") == "too many pending connections"]
    timed_out = [e for e in events if e["detail"].get("reason") == "no association request in time"]
    # one line at once, one summing up the rest: not one fsync'd line per attempt
    assert len(refused) == 2 and 1 <= len(timed_out) <= 2
    refused_count = sum(e["detail"].get("repeated", 1) for e in refused)
    timed_out_count = sum(e["detail"].get("repeated", 1) for e in timed_out)
    assert refused_count + timed_out_count == 300  # every attempt is accounted for
    assert timed_out_count >= pending_cap and refused_count >= 200


def test_one_ae_cannot_hold_every_association_slot(start: StartArchive, tmp_path: Path) -> None:
    archive = start(
        make_data_dir(tmp_path / "d", TESTER + TESTER2), **{"server.max_associations": 4}
    )
    assert archive.settings.per_ae_cap == 2
    with held([associate(archive) for _ in range(3)]) as mine:
        assert [a.is_established for a in mine] == [True, True, False]
        assert rejection(mine[2]) == (2, 3, 2)  # transient, local limit exceeded
        with held([associate(archive, "TESTER2", source=OTHER_SOURCE)]) as (other,):
            assert other.is_established
    reasons = [e["detail"].get("reason", "") for e in audit_events(archive)]
    assert "per-AE association limit (2) reached" in reasons


def test_the_association_cap_holds_under_concurrent_requests(start: StartArchive) -> None:
    archive = start(
        **{
            "server.max_associations": 3,
            "server.max_associations_per_ae": 3,
            "server.max_pending_per_source": 64,
        }
    )
    results: list[Association] = []
    # 10 at once: under the archive's pending-connection cap (4 x max_associations), so every
    # request reaches the association cap rather than being closed at connect.
    barrier = threading.Barrier(10, timeout=30)

    def one() -> None:
        barrier.wait()
        results.append(associate(archive))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    with held(results):
        assert len(results) == 10
        assert sum(a.is_established for a in results) == 3
        assert all(rejection(a) == (2, 3, 2) for a in results if not a.is_established)


def test_rejections_do_not_tell_registered_ae_titles(start: StartArchive, tmp_path: Path) -> None:
    archive = start()
    unknown = associate(archive, "STRANGER")
    wrong_called = associate(archive, called="ANY-SCP")
    no_identity = associate(archive, "ADMIN")  # registered, but sends no credentials
    assert rejection(unknown) == rejection(wrong_called) == rejection(no_identity) == (1, 1, 1)
    reasons = [e["detail"].get("reason", "") for e in audit_events(archive)]
    assert any("not registered" in r for r in reasons)  # the audit log keeps the real reason
    assert any("called AE 'ANY-SCP'" in r for r in reasons)
    detailed = start(make_data_dir(tmp_path / "detailed"), **{"security.detailed_rejections": True})
    assert rejection(associate(detailed, "STRANGER")) == (1, 1, 3)
    assert rejection(associate(detailed, called="ANY-SCP")) == (1, 1, 7)


def test_peer_supplied_text_is_clipped_in_the_audit_log(start: StartArchive) -> None:
    archive = start()
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"u" * 60_000 + b"\n{forged}"
    identity.secondary_field = b"wrong"
    assert associate(archive, "ADMIN", identity=identity).is_rejected
    lines = Path(archive.settings.audit.log_path).read_text().splitlines()
    assert max(len(line) for line in lines) < 2000
    assert not any("{forged}" in line for line in lines)
    assert any("+" in json.loads(line)["detail"].get("reason", "") for line in lines)


def per_store_ms(assoc: Association, count: int) -> list[float]:
    base = good_dataset()
    times = []
    for _ in range(count):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        started = time.perf_counter()
        status = assoc.send_c_store(ds)
        times.append((time.perf_counter() - started) * 1000)
        assert status.Status == 0
    return times


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_a_client_with_nagle_on_pays_no_delayed_ack(start: StartArchive, tls: bool) -> None:
    """pynetdicom leaves Nagle on: its data set PDU waits for our ACK of the command PDU.
    With delayed ACKs that was ~40 ms per C-STORE; now it costs what a TCP_NODELAY client pays."""
    archive = start()
    endpoint = next(e for e in archive.endpoints if e.tls is tls)
    medians = {}
    for nodelay in (False, True):
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        tls_args: tuple[ssl.SSLContext, str] | None = (
            (stranger_tls_context(), endpoint.host) if tls else None
        )
        assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD", tls_args=tls_args)
        assert assoc.is_established
        try:
            sock = assoc.dul.socket.socket  # type: ignore[union-attr]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the default
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            medians[nodelay] = statistics.median(per_store_ms(assoc, 50))
        finally:
            assoc.release()
    print(f"median per C-STORE: Nagle on {medians[False]:.1f} ms, off {medians[True]:.1f} ms")
    assert medians[False] < medians[True] + 20


def large_identifier(size: int = 1_000_000) -> bytes:
    """A C-FIND identifier (Implicit VR Little Endian) of about `size` bytes: a STUDY-level
    query padded with ~41,000 small private elements, which pydicom takes seconds to parse."""

    def element(group: int, number: int, value: bytes) -> bytes:
        value += b" " * (len(value) % 2)
        return struct.pack("<HHI", group, number, len(value)) + value

    parts = [element(0x0008, 0x0052, b"STUDY"), element(0x0010, 0x0020, b"")]
    total = sum(len(p) for p in parts)
    tags = ((g, e) for g in range(0x0011, 0x0100, 2) for e in range(0x1000, 0x10000))
    while total < size - 24:
        parts.append(element(*next(tags), b"x" * 16))
        total += 24
    return b"".join(parts)


def read_pdu_blocking(sock: socket.socket) -> bytes:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    header = exactly(6)
    return header + exactly(int.from_bytes(header[2:6], "big"))


def send_find(
    port: int,
    identifier: bytes,
    statuses: list[int],
    *,
    calling: str = "TESTER",
    abstract_syntax: str = uids.STUDY_ROOT_FIND,
    ready: threading.Event | None = None,
) -> None:
    """One C-FIND-RQ (Study Root) with `identifier` (Implicit VR Little Endian) on a context
    for `abstract_syntax`; the responses' statuses go to `statuses`, the final one last."""
    context = ProposedContext(1, abstract_syntax, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))
    request = C_FIND()
    request.MessageID = 1
    request.AffectedSOPClassUID = uids.STUDY_ROOT_FIND
    request.Priority = 2
    request.Identifier = BytesIO(identifier)
    payload = encode_message(request, 1, 16384, request=True)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(encode_associate_rq(calling, "PACSGUARD", (context,), 16384))
        assert read_pdu_blocking(sock)[0] == 0x02  # A-ASSOCIATE-AC
        if ready is not None:
            ready.wait(30)
        sock.sendall(payload)
        assembler = MessageAssembler()
        for _ in range(1000):  # pending responses (none: nothing is stored), then the final
            pdu = read_pdu_blocking(sock)
            assert pdu[0] == 0x04, f"PDU type {pdu[0]:#x}"
            message = assembler.feed(RawPdu(pdu[0], pdu))
            if message is not None:
                status = message.command.status
                assert status is not None
                statuses.append(status)
                if status not in (0xFF00, 0xFF01):
                    return


MODALITY = """
[[ae]]
ae_title = "MODALITY"
auth = "address"
address = "127.0.0.1"
permissions = ["echo", "store"]
"""


def test_permission_is_checked_before_the_identifier_is_decoded(
    start: StartArchive, tmp_path: Path
) -> None:
    """A peer without find permission that sends a C-FIND anyway (on its storage context)
    is refused as not authorized, whatever its identifier: an undecodable one is never looked
    at (decoding first would answer 'unable to process')."""
    archive = start(make_data_dir(tmp_path / "d", TESTER + MODALITY))
    port = plain(archive).port
    garbage = b"\xff\xfe" * 5000
    refused: list[int] = []
    send_find(port, garbage, refused, calling="MODALITY", abstract_syntax=CTImageStorage)
    assert refused == [0x0124]  # Refused: Not Authorized (PS3.7 C.4.1.1.4)
    permitted: list[int] = []
    send_find(port, garbage, permitted)
    assert len(permitted) == 1 and permitted[0] not in (0x0000, 0x0124)
    denials = [e for e in audit_events(archive) if e["event"] == "policy-denial"]
    assert [(e["participants"][0]["ae_title"], e["detail"]["action"]) for e in denials] == [
        ("MODALITY", "find")
    ]


def test_an_identifier_over_1_mib_ends_only_its_own_association(
    start: StartArchive, tmp_path: Path
) -> None:
    archive = start(make_data_dir(tmp_path / "d", TESTER + TESTER2))
    # An A-ABORT instead of a response, or a reset if we were still sending when it closed.
    with pytest.raises((AssertionError, ConnectionError)) as ended:
        send_find(plain(archive).port, large_identifier(1_100_000), [])
    assert isinstance(ended.value, ConnectionError) or "PDU type 0x7" in str(ended.value)
    with held([associate(archive, "TESTER2", source=OTHER_SOURCE)]) as (other,):
        assert other.send_c_echo().Status == 0


def test_a_large_identifier_does_not_delay_another_peers_echo(tmp_path: Path) -> None:
    """The identifier is decoded off the event loop (pydicom took 3.4 s for this one on the
    loop), so another peer's C-ECHO is answered as before. The archive runs as its own process
    so that the test's clients do not share its interpreter. Noise on a shared machine only
    adds latency, so the best of three attempts is judged (a regression fails all three)."""
    port = free_port()
    data_dir = make_data_dir(tmp_path / "d", TESTER + TESTER2)
    serve = start_serve(data_dir, port, tmp_path / "serve.log")
    attempts: list[tuple[float, float, int]] = []  # (baseline median, max during, echoes)
    identifier = large_identifier()
    assert len(identifier) > 990_000
    try:
        ae = AE(ae_title="TESTER2")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        echo = ae.associate("127.0.0.1", port, ae_title="PACSGUARD", bind_address=(OTHER_SOURCE, 0))
        assert echo.is_established

        def rtt() -> float:
            started = time.perf_counter()
            assert echo.send_c_echo().Status == 0
            return time.perf_counter() - started

        try:
            for _ in range(3):
                baseline = statistics.median(rtt() for _ in range(20))
                ready, statuses = threading.Event(), list[int]()
                sender = threading.Thread(
                    target=send_find,
                    args=(port, identifier, statuses),
                    kwargs={"ready": ready},
                )
                sender.start()
                ready.set()
                during: list[float] = []
                deadline = time.monotonic() + 60
                while sender.is_alive() and time.monotonic() < deadline and len(during) < 5000:
                    during.append(rtt())
                    time.sleep(0.005)
                sender.join(timeout=60)
                assert statuses and statuses[-1] == 0x0000  # the query itself was answered
                attempts.append((baseline, max(during), len(during)))
                if max(during) - baseline < 0.1:
                    break
        finally:
            echo.release()
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    for baseline, worst, count in attempts:
        print(
            f"C-ECHO: baseline median {baseline * 1000:.1f} ms, max during the large C-FIND "
            f"{worst * 1000:.1f} ms over {count} echoes"
        )
    assert min(worst - baseline for baseline, worst, _ in attempts) < 0.1
