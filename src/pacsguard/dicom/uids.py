"""UIDs pacsguard uses, named once.

Plain strings, not pydicom's `UID`: the scanner's association code uses them and must not
import pydicom (start-up; see `pacsguard.dicom.acse`). pydicom turns a str into a UID wherever
it stores one.
"""

from __future__ import annotations

from typing import Final

#: DICOM application context name (PS3.7 A.2.1).
APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"

VERIFICATION: Final = "1.2.840.10008.1.1"
STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.2.3"
#: Secondary Capture Image Storage: the storage SOP class the probe proposes (never sent).
SECONDARY_CAPTURE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.4"

IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"

#: pacsguard's implementation class UID. 1.2.826.0.1.3680043.10.? roots are handed out by
#: Medical Connections for free; until we hold one, we use pydicom's documented example root
#: with a pacsguard-specific suffix so that remote logs can identify the scanner.
IMPLEMENTATION_CLASS_UID: Final = "1.2.826.0.1.3680043.8.498.7267656"
IMPLEMENTATION_VERSION_NAME: Final = "PACSGUARD_01"

SOP_CLASS_NAMES: Final[dict[str, str]] = {
    VERIFICATION: "verification",
    STUDY_ROOT_FIND: "study-root-find",
    PATIENT_ROOT_FIND: "patient-root-find",
    SECONDARY_CAPTURE_STORAGE: "storage",
}
