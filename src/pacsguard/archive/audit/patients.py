"""Patient identifiers in audit events: a keyed pseudonym to search by, a sealed copy to export.

The brief of the archive is that patient data never rests in clear, and the audit log rests on
disk and is copied to syslog collectors. So an audit event never holds a Patient ID; it holds a
*patient reference*, the participant object ``("patient-ref", "<pseudonym>.<sealed>")``:

- ``pseudonym``: HMAC-SHA256 of the Patient ID (UTF-8, as the index stores it), first 128 bits
  in hex. Deterministic, so every event about one patient carries the same pseudonym and
  ``pacsguard audit find`` finds them all; keyed, so that nobody without the key can test
  guesses (an SSN-shaped ID has only 10^9 values: an unkeyed hash would be reversed in seconds).
- ``sealed``: AES-256-GCM of the Patient ID under a random 96-bit nonce, with the pseudonym as
  associated data (a sealed ID moved next to another pseudonym does not open), base64url
  ``nonce || ciphertext || tag``. Only a holder of the key can recover the ID, which an IHE ATNA
  export (``pacsguard audit export --key-file``) needs: PS3.15 A.5 names the patient by ID.

Both keys come from the archive's at-rest key (``storage.key_file``) by HKDF-SHA256 with labels
of their own, distinct from the blob and index labels, so no key serves two purposes and no new
secret has to be backed up. Copies that leave the machine (syslog) carry the pseudonym only.

Logs written before this change hold ``("patient", <Patient ID>)`` in clear; they still verify
(the chain is never rewritten) and are read, searched and exported as they are.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pacsguard.archive.audit.chain import LoggedEvent

#: Participant object kind of a patient reference (pseudonym and sealed ID).
PATIENT_REF: Final = "patient-ref"
#: Participant object kind of a Patient ID in clear: only in logs written before patient refs.
LEGACY_PATIENT: Final = "patient"
#: HKDF labels: distinct from the blobs' ("pacsguard-blob-v1\\0" + key) and the index's.
PSEUDONYM_KEY_INFO: Final = b"pacsguard-audit-patient-pseudonym-v1"
SEAL_KEY_INFO: Final = b"pacsguard-audit-patient-seal-v1"
_AAD: Final = b"pacsguard-audit-patient-v1\x00"
#: Hex digits of a pseudonym (128 bits).
PSEUDONYM_HEX: Final = 32
_NONCE: Final = 12


def _derive(at_rest_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(at_rest_key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_pseudonym(text: str) -> bool:
    return len(text) == PSEUDONYM_HEX and all(c in "0123456789abcdef" for c in text)


def split_reference(token: str) -> tuple[str, str]:
    """(pseudonym, sealed) of a patient reference; ValueError if it is not one."""
    pseudonym, dot, sealed = token.partition(".")
    if not dot or not is_pseudonym(pseudonym) or not sealed:
        raise ValueError("not a patient reference")
    return pseudonym, sealed


class PatientKey:
    """Makes and opens patient references; built from the archive's at-rest key."""

    def __init__(self, at_rest_key: bytes) -> None:
        if len(at_rest_key) != 32:
            raise ValueError("the at-rest key must be 32 bytes")
        self._mac_key = _derive(at_rest_key, PSEUDONYM_KEY_INFO)
        self._seal = AESGCM(_derive(at_rest_key, SEAL_KEY_INFO))

    def pseudonym(self, patient_id: str) -> str:
        """The keyed pseudonym of `patient_id` (stripped, as the index stores it)."""
        mac = hmac.new(self._mac_key, patient_id.strip().encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:PSEUDONYM_HEX]

    def reference(self, patient_id: str) -> str:
        """``<pseudonym>.<sealed Patient ID>``: what an audit event holds for a patient."""
        value = patient_id.strip()
        pseudonym = self.pseudonym(value)
        nonce = os.urandom(_NONCE)
        sealed = self._seal.encrypt(nonce, value.encode("utf-8"), _AAD + pseudonym.encode())
        return f"{pseudonym}.{_b64(nonce + sealed)}"

    def objects(self, patient_ids: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """Participant objects for these patients, sorted by pseudonym, one each; empty IDs
        (a Patient ID is type 2: it may be empty) name nobody and are left out."""
        unique = {p.strip() for p in patient_ids} - {""}
        refs = sorted(self.reference(p) for p in unique)
        return tuple((PATIENT_REF, ref) for ref in refs)

    def reveal(self, token: str) -> str | None:
        """The Patient ID in a reference; None when it was sealed under another key (or the
        reference was altered)."""
        try:
            pseudonym, sealed = split_reference(token)
            raw = _unb64(sealed)
            plain = self._seal.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD + pseudonym.encode())
            return plain.decode("utf-8")
        except (ValueError, InvalidTag):  # UnicodeDecodeError is a ValueError
            return None


def patient_objects(
    key: PatientKey | None, patient_ids: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    """Participant objects for these patients: references with a key, nothing without one
    (never a Patient ID in clear)."""
    return () if key is None else key.objects(patient_ids)


@dataclass(frozen=True, slots=True)
class PatientMatch:
    """What `events_about` looks for: a pseudonym, and the ID itself for logs written before
    patient references (those hold it in clear)."""

    pseudonym: str
    patient_id: str | None = None


def event_pseudonyms(logged: LoggedEvent) -> set[str]:
    """The pseudonyms of the patient references in one logged event."""
    found = set()
    for kind, ident in logged.event.objects:
        if kind == PATIENT_REF:
            pseudonym, _, _ = ident.partition(".")
            found.add(pseudonym)
    return found


def events_about(events: Iterable[LoggedEvent], wanted: PatientMatch) -> Iterator[LoggedEvent]:
    """The events that name this patient, by pseudonym or (older lines) by clear ID."""
    for logged in events:
        by_reference = wanted.pseudonym in event_pseudonyms(logged)
        in_clear = wanted.patient_id is not None and any(
            kind == LEGACY_PATIENT and ident.strip() == wanted.patient_id.strip()
            for kind, ident in logged.event.objects
        )
        if by_reference or in_clear:
            yield logged
