"""Identifiers to archive requests: keys sent with the wrong VR are refused, multi-valued keys
split (both found by fuzzing, tests/fuzz/targets/identifiers.py)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.archive.dimse.identifiers import (
    BadIdentifier,
    query_from_identifier,
    retrieve_keys,
)
from pacsguard.dicom.dimse import decode_dataset, encode_dataset
from pacsguard.dicom.levels import Level, QueryRoot

UIDS = ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"]


def _over_the_wire(ds: Dataset) -> Dataset:
    decoded = decode_dataset(encode_dataset(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert decoded is not None
    return decoded


def test_multi_valued_unique_keys_are_split() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = UIDS
    assert retrieve_keys(_over_the_wire(ds)) == (Level.STUDY, UIDS)


def _with_bytes_vr(keyword_tag: bytes) -> Dataset:
    """An identifier whose key comes as OB (explicit VR): pydicom gives bytes, not text."""
    level = b"\x08\x00\x52\x00CS\x06\x00STUDY "
    key = keyword_tag + b"OB\x00\x00" + len(UIDS[0]).to_bytes(4, "little") + UIDS[0].encode()
    ds = decode_dataset(BytesIO(level + key), ExplicitVRLittleEndian)
    assert ds is not None
    return ds


def test_a_unique_key_with_another_vr_is_refused() -> None:
    ds = _with_bytes_vr(b"\x20\x00\x0d\x00")  # (0020,000D) Study Instance UID
    with pytest.raises(BadIdentifier, match="StudyInstanceUID has VR OB"):
        retrieve_keys(ds)
    with pytest.raises(BadIdentifier, match="StudyInstanceUID has VR OB"):
        query_from_identifier(ds, QueryRoot.STUDY)


def test_a_level_sent_as_a_sequence_is_refused() -> None:
    """str() of a sequence parses its items, which raised pydicom's NotImplementedError for an
    unknown VR inside (and C-GET/C-MOVE ended the association)."""
    item = b"\xfe\xff\x00\xe0\x0a\x00\x00\x00" + b"\x43\x53\x06\x00CT\x02\x00AB"
    level = b"\x08\x00\x52\x00SQ\x00\x00" + len(item).to_bytes(4, "little") + item
    ds = decode_dataset(BytesIO(level), ExplicitVRLittleEndian)
    assert ds is not None
    with pytest.raises(BadIdentifier, match="QueryRetrieveLevel has VR SQ"):
        retrieve_keys(ds)
    with pytest.raises(BadIdentifier, match="QueryRetrieveLevel has VR SQ"):
        query_from_identifier(ds, QueryRoot.STUDY)
