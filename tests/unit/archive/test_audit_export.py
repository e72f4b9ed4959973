from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from pacsguard.archive.audit.events import (
    AuditEvent,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.audit.export import (
    PRIVATE_SCHEME,
    PSEUDONYM_ID_TYPE,
    audit_message,
    export_dicom_xml,
)
from pacsguard.archive.audit.log import LoggedEvent
from pacsguard.archive.audit.patients import PATIENT_REF, PatientKey

WHEN = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)

ASSOCIATION = AuditEvent(
    EventType.ASSOCIATION,
    EventAction.EXECUTE,
    EventOutcome.MINOR_FAILURE,
    (Participant(ae_title="CT<&1>", address="192.0.2.9"),),
    detail={"result": "rejected", "reason": "calling AE not registered"},
)
STORE = AuditEvent(
    EventType.STORE,
    EventAction.CREATE,
    EventOutcome.SUCCESS,
    (Participant(ae_title="CT1", address="192.0.2.5", user="tech"),),
    objects=(("study", "1.2.3.4"), ("patient", "PID-77"), ("query", "STUDY")),
)


def _code(element: ET.Element | None) -> tuple[str | None, str | None, str | None]:
    assert element is not None
    return (
        element.get("csd-code"),
        element.get("codeSystemName"),
        element.get("originalText"),
    )


def test_event_identification() -> None:
    message = audit_message(ASSOCIATION, WHEN, "PACSGUARD")
    identification = message.find("EventIdentification")
    assert identification is not None
    assert identification.get("EventActionCode") == "E"
    assert identification.get("EventOutcomeIndicator") == "4"
    assert identification.get("EventDateTime") == "2025-03-01T12:30:15.250Z"
    assert _code(identification.find("EventID")) == ("110114", "DCM", "User Authentication")
    assert _code(identification.find("EventTypeCode")) == (
        "association",
        PRIVATE_SCHEME,
        "association",
    )
    description = identification.findtext("EventOutcomeDescription")
    assert description == "reason=calling AE not registered; result=rejected"


def test_children_follow_the_schema_order() -> None:
    message = audit_message(STORE, WHEN, "PACSGUARD")
    tags = [child.tag for child in message]
    assert tags == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]


def test_active_participants_and_source() -> None:
    message = audit_message(STORE, WHEN, "PACSGUARD")
    requestor, archive = message.findall("ActiveParticipant")
    assert requestor.get("UserID") == "tech"
    assert requestor.get("AlternativeUserID") == "AETITLES=CT1"
    assert requestor.get("UserIsRequestor") == "true"
    assert requestor.get("NetworkAccessPointID") == "192.0.2.5"
    assert requestor.get("NetworkAccessPointTypeCode") == "2"
    assert archive.get("UserID") == "PACSGUARD"
    assert archive.get("UserIsRequestor") == "false"
    source = message.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "PACSGUARD"
    assert _code(source.find("AuditSourceTypeCode"))[0] == "4"


def test_participant_objects() -> None:
    message = audit_message(STORE, WHEN, "PACSGUARD")
    study, patient, query = message.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == "1.2.3.4"
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == (
        "2",
        "3",
    )
    assert _code(study.find("ParticipantObjectIDTypeCode")) == (
        "110180",
        "DCM",
        "Study Instance UID",
    )
    assert patient.get("ParticipantObjectID") == "PID-77"
    assert patient.get("ParticipantObjectTypeCode") == "1"
    assert _code(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881", "Patient Number")
    assert query.get("ParticipantObjectTypeCodeRole") == "24"
    assert _code(query.find("ParticipantObjectIDTypeCode"))[1] == PRIVATE_SCHEME


def test_document_parses_back_with_one_message_per_event() -> None:
    logged = [
        LoggedEvent(1, WHEN, ASSOCIATION, "a" * 64),
        LoggedEvent(2, WHEN, STORE, "b" * 64),
    ]
    document = export_dicom_xml(logged, "PACSGUARD")
    assert document.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(document)
    assert root.tag == "AuditMessages"
    assert root.get("count") == "2"
    messages = root.findall("AuditMessage")
    assert len(messages) == 2
    ids = [_code(m.find("EventIdentification/EventID"))[0] for m in messages]
    assert ids == ["110114", "110104"]
    # markup in values is escaped, and survives the round trip unchanged
    assert b"CT<&1>" not in document
    first = messages[0].find("ActiveParticipant")
    assert first is not None and first.get("AlternativeUserID") == "AETITLES=CT<&1>"


def test_no_participants_makes_the_archive_the_requestor() -> None:
    start = AuditEvent(EventType.APPLICATION_START, EventAction.EXECUTE, EventOutcome.SUCCESS)
    (archive,) = audit_message(start, WHEN, "PACSGUARD").findall("ActiveParticipant")
    assert archive.get("UserIsRequestor") == "true"
    assert _code(audit_message(start, WHEN, "X").find("EventIdentification/EventID"))[0] == "110100"


PATIENTS = PatientKey(bytes(range(32)))
REFERENCED = AuditEvent(
    EventType.RETRIEVE,
    EventAction.READ,
    EventOutcome.SUCCESS,
    (Participant(ae_title="VIEWER", address="192.0.2.7"),),
    objects=(("study", "1.2.3.4"), (PATIENT_REF, PATIENTS.reference("PID-77"))),
)


def _patient(message: ET.Element) -> ET.Element:
    (patient,) = [
        o
        for o in message.findall("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCodeRole") == "1"
    ]
    return patient


def test_with_the_key_a_referenced_patient_is_exported_by_patient_id() -> None:
    patient = _patient(audit_message(REFERENCED, WHEN, "PACSGUARD", PATIENTS))
    assert patient.get("ParticipantObjectID") == "PID-77"
    assert patient.get("ParticipantObjectTypeCode") == "1"
    assert _code(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881", "Patient Number")


def test_without_the_key_or_with_another_one_only_the_pseudonym_is_exported() -> None:
    for patients in (None, PatientKey(bytes(32))):
        message = audit_message(REFERENCED, WHEN, "PACSGUARD", patients)
        patient = _patient(message)
        assert patient.get("ParticipantObjectID") == PATIENTS.pseudonym("PID-77")
        assert _code(patient.find("ParticipantObjectIDTypeCode")) == PSEUDONYM_ID_TYPE
        text = ET.tostring(message)
        assert b"PID-77" not in text
        assert REFERENCED.objects[1][1].partition(".")[2].encode() not in text  # nor sealed


def test_export_document_decrypts_with_the_key() -> None:
    logged = [LoggedEvent(1, WHEN, REFERENCED, "a" * 64)]
    assert b"PID-77" in export_dicom_xml(logged, "PACSGUARD", PATIENTS)
    assert b"PID-77" not in export_dicom_xml(logged, "PACSGUARD")
