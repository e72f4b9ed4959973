"""Scan records are encoded with orjson where it writes exactly what json.dumps writes
(`pacsguard.report.jsonl.encode_record`); json itself is the oracle, on arbitrary JSON values."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacsguard.report.jsonl import encode_record

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=-1e-3, max_value=1e-3)
    | st.text()
    | st.text(st.characters(min_codepoint=0, max_codepoint=0x7F))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), values, max_size=12))
def test_records_are_encoded_as_json_dumps_encodes_them(record: dict[str, Any]) -> None:
    assert encode_record(record) == json.dumps(record, separators=(",", ":"), sort_keys=True)


def test_a_closed_targets_record_is_encoded_as_json_would() -> None:
    record = {
        "host": "127.0.0.1",
        "port": 104,
        "duration_s": 0.0003,
        "findings": [],
        "exposure": None,
        "association": {"attempts": [{"tls": False}]},
    }
    assert encode_record(record) == json.dumps(record, separators=(",", ":"), sort_keys=True)


def test_delete_character_is_escaped_as_json_escapes_it() -> None:
    """Found by the property test above: orjson leaves U+007F raw, json writes \\u007f."""
    record = {"banner": "a\x7fb"}
    assert encode_record(record) == json.dumps(record, separators=(",", ":"), sort_keys=True)
