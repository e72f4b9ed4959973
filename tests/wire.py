"""Test helpers for bytes on the wire."""

from __future__ import annotations

from pacsguard.dicom.ul import RawPdu


def split_pdus(data: bytes) -> list[RawPdu]:
    """Cut a byte string of concatenated PDUs into framed PDUs, as `read_pdu` returns them."""
    pdus = []
    while data:
        length = int.from_bytes(data[2:6], "big")
        pdus.append(RawPdu(data[0], data[: 6 + length]))
        data = data[6 + length :]
    return pdus
