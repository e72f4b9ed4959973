"""Audit events as DICOM PS3.15 A.5 AuditMessage XML (the IHE ATNA / RFC 3881 form).

Each event becomes one ``<AuditMessage>``: EventIdentification (EventID from DCM, action, time,
outcome), ActiveParticipant (the requestor, and the archive itself), AuditSourceIdentification,
ParticipantObjectIdentification (study UID, patient, ...). `export_dicom_xml` wraps several
in one ``<AuditMessages>`` document. Built with xml.etree, never by string concatenation, so
values are always escaped.

Patients (`audit.patients`): events hold a reference, never the Patient ID. Given the
`PatientKey`, a reference becomes the Patient ID again, as PS3.15 A.5 expects ("Patient
Number", RFC 3881). Without it, or for a reference sealed under another key, the patient is
named by pseudonym, with a private ID type code saying so: that is what every syslog copy
carries (`message_bytes` never gets a key), so no Patient ID leaves the machine through it.
Patient IDs in clear from logs written before references are exported as they are.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from pacsguard.archive.audit.events import AuditEvent
from pacsguard.archive.audit.log import LoggedEvent
from pacsguard.archive.audit.patients import LEGACY_PATIENT, PATIENT_REF, PatientKey

#: (ParticipantObjectTypeCode, TypeCodeRole, ID type (code, scheme, meaning)) per object kind.
#: Type: 1 person, 2 system object. Role: 1 patient, 3 report, 24 query (RFC 3881 / PS3.15).
_OBJECTS: Final[dict[str, tuple[str, str, tuple[str, str, str]]]] = {
    LEGACY_PATIENT: ("1", "1", ("2", "RFC-3881", "Patient Number")),
    "study": ("2", "3", ("110180", "DCM", "Study Instance UID")),
    "sop-class": ("2", "3", ("110181", "DCM", "SOP Class UID")),
    "node": ("2", "3", ("110182", "DCM", "Node ID")),
}
#: Our own coding scheme (PS3.16 8.2: private schemes start with "99") for other object kinds.
PRIVATE_SCHEME: Final = "99PACSGUARD"
_QUERY_ROLE: Final = "24"
#: A patient named by keyed pseudonym: a person (1) in the patient role (1), private ID type.
PSEUDONYM_ID_TYPE: Final = ("patient-pseudonym", PRIVATE_SCHEME, "Patient ID pseudonym")


def _object(
    kind: str, ident: str, patients: PatientKey | None
) -> tuple[str, str, str, tuple[str, str, str]]:
    """(ParticipantObjectID, type code, role, ID type code) of one participant object."""
    if kind == PATIENT_REF:
        patient_id = None if patients is None else patients.reveal(ident)
        if patient_id is not None:
            return (patient_id, *_OBJECTS[LEGACY_PATIENT])
        return (ident.partition(".")[0], "1", "1", PSEUDONYM_ID_TYPE)
    type_code, role, id_type = _OBJECTS.get(
        kind, ("2", _QUERY_ROLE if kind == "query" else "3", (kind, PRIVATE_SCHEME, kind))
    )
    return ident, type_code, role, id_type


def _coded(parent: ET.Element, tag: str, code: str, scheme: str, meaning: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": meaning}
    )


def _xml_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _outcome_description(event: AuditEvent) -> str | None:
    if not event.detail:
        return None
    return "; ".join(f"{key}={value}" for key, value in sorted(event.detail.items()))


def audit_message(
    event: AuditEvent, moment: datetime, source_id: str, patients: PatientKey | None = None
) -> ET.Element:
    """One PS3.15 A.5.1 AuditMessage for `event`, which happened at `moment`; patients by ID
    when `patients` opens their references, by pseudonym otherwise."""
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": event.action.value,
            "EventDateTime": _xml_time(moment),
            "EventOutcomeIndicator": str(int(event.outcome)),
        },
    )
    code, meaning = event.event.code
    _coded(identification, "EventID", code, "DCM", meaning)
    _coded(identification, "EventTypeCode", event.event.value, PRIVATE_SCHEME, event.event.value)
    description = _outcome_description(event)
    if description is not None:
        ET.SubElement(identification, "EventOutcomeDescription").text = description
    for participant in event.participants:
        attributes = {
            "UserID": participant.user or participant.ae_title or participant.address or "unknown",
            "UserIsRequestor": "true" if participant.requestor else "false",
        }
        if participant.ae_title:
            attributes["AlternativeUserID"] = f"AETITLES={participant.ae_title}"
        if participant.user:
            attributes["UserName"] = participant.user
        if participant.address:
            attributes["NetworkAccessPointID"] = participant.address
            attributes["NetworkAccessPointTypeCode"] = "2"  # IP address
        ET.SubElement(root, "ActiveParticipant", attributes)
    ET.SubElement(
        root,
        "ActiveParticipant",
        {
            "UserID": source_id,
            "AlternativeUserID": f"AETITLES={source_id}",
            "UserIsRequestor": "false" if event.participants else "true",
        },
    )
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    _coded(source, "AuditSourceTypeCode", "4", "DCM", "Application Server")
    for kind, value in event.objects:
        ident, type_code, role, id_type = _object(kind, value, patients)
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": ident,
                "ParticipantObjectTypeCode": type_code,
                "ParticipantObjectTypeCodeRole": role,
            },
        )
        _coded(obj, "ParticipantObjectIDTypeCode", *id_type)
    return root


def export_dicom_xml(
    events: Iterable[LoggedEvent], source_id: str, patients: PatientKey | None = None
) -> bytes:
    """A UTF-8 XML document: ``<AuditMessages>`` holding one AuditMessage per event; patients
    by ID where `patients` opens their references."""
    root = ET.Element("AuditMessages")
    count = 0
    for logged in events:
        root.append(audit_message(logged.event, logged.time, source_id, patients))
        count += 1
    root.set("count", str(count))
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def message_bytes(event: AuditEvent, moment: datetime, source_id: str) -> bytes:
    """One AuditMessage alone, as UTF-8 without a declaration (the syslog payload): patients
    by pseudonym only, whatever the event holds."""
    message: bytes = ET.tostring(audit_message(event, moment, source_id), encoding="utf-8")
    return message
