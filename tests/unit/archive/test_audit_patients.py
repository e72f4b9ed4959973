"""Patient references in audit events: keyed pseudonym, sealed ID, search (`audit.patients`)."""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pacsguard.archive.audit.chain import LoggedEvent
from pacsguard.archive.audit.events import AuditEvent, EventAction, EventOutcome, EventType
from pacsguard.archive.audit.patients import (
    PATIENT_REF,
    PSEUDONYM_KEY_INFO,
    SEAL_KEY_INFO,
    PatientKey,
    PatientMatch,
    events_about,
    patient_objects,
    split_reference,
)
from pacsguard.archive.blobs.aead import _INFO as BLOB_INFO
from pacsguard.archive.security.bootstrap import INDEX_KEY_INFO

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
WHEN = datetime(2026, 1, 2, tzinfo=UTC)


def test_the_pseudonym_is_hmac_sha256_under_an_hkdf_key_of_its_own() -> None:
    """Oracle: the cryptography library's HKDF and the standard library's HMAC."""
    mac_key = HKDF(hashes.SHA256(), 32, None, PSEUDONYM_KEY_INFO).derive(KEY)
    expected = hmac.new(mac_key, b"123-45-6789", hashlib.sha256).hexdigest()[:32]
    assert PatientKey(KEY).pseudonym("123-45-6789") == expected
    assert PatientKey(KEY).pseudonym(" 123-45-6789 ") == expected  # as the index stores it


def test_labels_are_distinct_from_every_other_use_of_the_at_rest_key() -> None:
    labels = {PSEUDONYM_KEY_INFO, SEAL_KEY_INFO, INDEX_KEY_INFO, BLOB_INFO}
    assert len(labels) == 4
    assert not any(a != b and a.startswith(b) for a in labels for b in labels)


def test_pseudonyms_depend_on_the_id_and_the_key() -> None:
    key = PatientKey(KEY)
    assert key.pseudonym("PID-1") == key.pseudonym("PID-1")
    assert key.pseudonym("PID-1") != key.pseudonym("PID-2")
    assert key.pseudonym("PID-1") != PatientKey(OTHER).pseudonym("PID-1")


def test_a_reference_holds_no_id_and_opens_only_with_its_key() -> None:
    key = PatientKey(KEY)
    ref = key.reference("PID-77")
    assert "PID-77" not in ref and "PID" not in ref
    pseudonym, sealed = split_reference(ref)
    assert pseudonym == key.pseudonym("PID-77") and sealed
    assert key.reference("PID-77") != ref  # a fresh nonce each time
    assert key.reveal(ref) == "PID-77"
    assert PatientKey(OTHER).reveal(ref) is None


def test_a_sealed_id_moved_to_another_pseudonym_or_altered_does_not_open() -> None:
    key = PatientKey(KEY)
    ref = key.reference("PID-77")
    _, sealed = split_reference(ref)
    assert key.reveal(f"{key.pseudonym('PID-78')}.{sealed}") is None
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    assert key.reveal(f"{key.pseudonym('PID-77')}.{flipped}") is None
    for broken in ("", "PID-77", "abc.def", f"{key.pseudonym('PID-77')}."):
        assert key.reveal(broken) is None


def test_objects_one_per_patient_and_none_without_a_key() -> None:
    key = PatientKey(KEY)
    objects = key.objects(["B", "A", "B ", ""])
    assert [kind for kind, _ in objects] == [PATIENT_REF, PATIENT_REF]
    assert sorted(key.reveal(ref) for _, ref in objects) == ["A", "B"]  # type: ignore[type-var]
    assert patient_objects(None, ["A"]) == ()


def test_random_ids_never_show_through() -> None:
    key = PatientKey(os.urandom(32))
    for _ in range(200):
        patient_id = os.urandom(6).hex()
        assert patient_id not in key.reference(patient_id)


def _logged(seq: int, *objects: tuple[str, str]) -> LoggedEvent:
    event = AuditEvent(EventType.STORE, EventAction.CREATE, EventOutcome.SUCCESS, objects=objects)
    return LoggedEvent(seq, WHEN, event, "0" * 64)


def test_events_about_a_patient_by_pseudonym_and_in_older_lines_by_id() -> None:
    key = PatientKey(KEY)
    log = [
        _logged(1, ("patient", "PID-1")),  # written before patient references
        _logged(2, ("study", "1.2"), (PATIENT_REF, key.reference("PID-1"))),
        _logged(3, (PATIENT_REF, key.reference("PID-2"))),
        _logged(4, (PATIENT_REF, key.reference("PID-2")), (PATIENT_REF, key.reference("PID-1"))),
    ]
    by_id = PatientMatch(key.pseudonym("PID-1"), "PID-1")
    assert [e.seq for e in events_about(log, by_id)] == [1, 2, 4]
    by_pseudonym = PatientMatch(key.pseudonym("PID-1"))
    assert [e.seq for e in events_about(log, by_pseudonym)] == [2, 4]


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PatientKey(b"short")
