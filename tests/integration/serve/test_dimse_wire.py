"""The DIMSE front end through the wire: who answers, and protocol abuse.

dcmtk peers against the same front end: tests/interop/test_archive_dcmtk.py."""

from __future__ import annotations

import asyncio
import socket
import struct

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacsguard.archive.dimse.aio import AsyncDimseFrontEnd
from pacsguard.dicom import uids

from .conftest import StartArchive, open_as_tester
from .test_serve import client, plain

DCMTK = ("storescu", "findscu", "getscu", "movescu", "storescp", "echoscu")


def test_echo_is_answered_by_pacsguard_not_pynetdicom(start: StartArchive) -> None:
    archive = start()
    assert isinstance(archive.front_ends[0], AsyncDimseFrontEnd)
    endpoint = plain(archive)
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
        assert status is not None and int(status.Status) == 0x0000
        # The AC names our implementation, not pynetdicom's.
        assert assoc.acceptor.implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME
    finally:
        assoc.release()


def test_malformed_bytes_after_association_abort_and_server_keeps_serving(
    start: StartArchive,
) -> None:
    archive = start()
    endpoint = plain(archive)

    async def misbehave(garbage: bytes) -> bytes:
        assoc = await open_as_tester(endpoint.port, [uids.VERIFICATION], read_timeout=5.0)
        assoc._writer.write(garbage)
        await assoc._writer.drain()
        async with asyncio.timeout(5.0):
            received = await assoc._reader.read()  # until the server closes
        assoc._writer.close()
        return received

    undecodable_pdata = struct.pack(">BBI", 0x04, 0, 6) + struct.pack(">IBB", 2, 1, 0x03)
    for garbage in (b"\xff" * 32, undecodable_pdata, struct.pack(">BBI", 0x04, 0, 1 << 30)):
        received = asyncio.run(misbehave(garbage))
        assert received[:1] == b"\x07"  # A-ABORT, then the connection closed
    # A peer that connects and sends nothing but junk before associating: closed as well.
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        answer = b""
        while chunk := sock.recv(64):
            answer += chunk
        assert answer[:1] in (b"", b"\x07")
    ae = client()
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    assoc.release()


# -- dcmtk peers ---------------------------------------------------------------------------------
