"""Reduce query responses to categories of identifying data, discarding the values.

This is the one place where a remote's attribute values are looked at: each value is tested for
presence and shape, then dropped. Nothing here returns, logs or stores a value.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # only annotations: importing this module must not load pydicom
    from pydicom.dataset import Dataset


class PhiCategory(StrEnum):
    """Kinds of identifying data a query response carried (values are never kept)."""

    PATIENT_NAME = "patient_name"
    PATIENT_BIRTH_DATE = "patient_birth_date"
    PATIENT_ID = "patient_id"
    PATIENT_ID_SSN_SHAPED = "patient_id_ssn_shaped"
    PATIENT_SEX = "patient_sex"
    REFERRING_PHYSICIAN = "referring_physician"
    INSTITUTION = "institution"
    ACCESSION_NUMBER = "accession_number"
    STUDY_DATE = "study_date"
    STUDY_DESCRIPTION = "study_description"


#: US SSN shape: AAA-GG-SSSS, or nine bare digits (PS3.15 lists SSN among direct identifiers).
_SSN: Final = re.compile(r"^\d{3}-?\d{2}-?\d{4}$")

_KEYWORD_CATEGORY: Final[dict[str, PhiCategory]] = {
    "PatientName": PhiCategory.PATIENT_NAME,
    "PatientBirthDate": PhiCategory.PATIENT_BIRTH_DATE,
    "PatientID": PhiCategory.PATIENT_ID,
    "PatientSex": PhiCategory.PATIENT_SEX,
    "ReferringPhysicianName": PhiCategory.REFERRING_PHYSICIAN,
    "InstitutionName": PhiCategory.INSTITUTION,
    "AccessionNumber": PhiCategory.ACCESSION_NUMBER,
    "StudyDate": PhiCategory.STUDY_DATE,
    "StudyDescription": PhiCategory.STUDY_DESCRIPTION,
}

#: The attribute keywords the scanner asks for to detect the categories above.
PHI_RETURN_KEYS: Final = tuple(_KEYWORD_CATEGORY)


def looks_like_ssn(value: str) -> bool:
    return bool(_SSN.match(value.strip()))


def categorize(identifier: Dataset) -> set[PhiCategory]:
    """The PHI categories present (non-empty) in one query response."""
    found: set[PhiCategory] = set()
    for keyword, category in _KEYWORD_CATEGORY.items():
        try:
            value = identifier.get(keyword)
        except Exception:  # a malformed element from a remote: treat as absent
            continue
        text = str(value).strip() if value is not None else ""
        if not text:
            continue
        found.add(category)
        if category is PhiCategory.PATIENT_ID and looks_like_ssn(text):
            found.add(PhiCategory.PATIENT_ID_SSN_SHAPED)
    return found
