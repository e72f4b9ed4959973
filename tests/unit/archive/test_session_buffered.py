"""`_whole_pdu_buffered`: a PDU read goes untimed only when it cannot wait for the peer."""

from __future__ import annotations

import asyncio
import struct

from pacsguard.archive.dimse.aio_session import _whole_pdu_buffered
from pacsguard.dicom.ul import read_pdu


def _pdu(body: bytes) -> bytes:
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def test_only_a_whole_buffered_pdu_counts() -> None:
    async def check() -> None:
        reader = asyncio.StreamReader()
        assert not _whole_pdu_buffered(reader)  # nothing yet
        whole = _pdu(b"x" * 20)
        reader.feed_data(whole[:4])
        assert not _whole_pdu_buffered(reader)  # not even the header
        reader.feed_data(whole[4:10])
        assert not _whole_pdu_buffered(reader)  # the header, part of the body
        reader.feed_data(whole[10:] + _pdu(b"y")[:3])
        assert _whole_pdu_buffered(reader)
        # and read_pdu then returns it without waiting for more data
        pdu = await asyncio.wait_for(read_pdu(reader, 1 << 20), 1.0)
        assert pdu.data == whole
        assert not _whole_pdu_buffered(reader)  # the next one is incomplete

    asyncio.run(check())
