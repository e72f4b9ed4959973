"""A-ASSOCIATE-RQ input the acceptor refuses before negotiating (found by fuzzing,
tests/fuzz/targets/associate.py)."""

from __future__ import annotations

import pytest
from pynetdicom.pdu import A_ASSOCIATE_RQ

from pacsguard.archive.dimse.aio_negotiation import decode_request
from pacsguard.dicom.ul import ProposedContext, encode_associate_rq
from pacsguard.errors import MalformedPdu

CT = "1.2.840.10008.5.1.4.1.1.2"


def _without(sub_item_type: int) -> bytes:
    """An A-ASSOCIATE-RQ whose one presentation context lacks a sub-item (0x30 abstract
    syntax, 0x40 transfer syntax); the item and PDU lengths are fixed up."""
    data = bytearray(encode_associate_rq("TESTER", "PACSGUARD", (ProposedContext(1, CT),), 0))
    start = data.index(b"\x20\x00", 74)  # the presentation context item
    item_end = start + 4 + int.from_bytes(data[start + 2 : start + 4], "big")
    offset, kept = start + 8, bytearray()
    while offset < item_end:
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if data[offset] != sub_item_type:
            kept += data[offset : offset + 4 + length]
        offset += 4 + length
    item = data[start : start + 8] + kept
    item[2:4] = (len(item) - 4).to_bytes(2, "big")
    pdu = data[:start] + item + data[item_end:]
    pdu[2:6] = (len(pdu) - 6).to_bytes(4, "big")
    return bytes(pdu)


@pytest.mark.parametrize(("sub_item", "message"), [(0x30, "abstract"), (0x40, "transfer")])
def test_a_presentation_context_without_a_syntax_is_malformed(sub_item: int, message: str) -> None:
    data = _without(sub_item)
    A_ASSOCIATE_RQ().decode(data)  # pynetdicom itself takes it
    with pytest.raises(MalformedPdu, match=message):
        decode_request(data)
