from __future__ import annotations

from pydicom.dataset import Dataset

from pacsguard.dicom.phi import PhiCategory, categorize, looks_like_ssn


def test_ssn_shapes() -> None:
    assert looks_like_ssn("912-34-5678")
    assert looks_like_ssn("912345678")
    assert not looks_like_ssn("PGLAB0000001")
    assert not looks_like_ssn("12-345-6789")


def test_categories_present_only_when_non_empty() -> None:
    ds = Dataset()
    ds.PatientName = "Synthetic^Test"
    ds.PatientID = "912-34-5678"
    ds.PatientBirthDate = ""
    ds.StudyDate = "20200101"
    found = categorize(ds)
    assert found == {
        PhiCategory.PATIENT_NAME,
        PhiCategory.PATIENT_ID,
        PhiCategory.PATIENT_ID_SSN_SHAPED,
        PhiCategory.STUDY_DATE,
    }


def test_categories_never_carry_values() -> None:
    ds = Dataset()
    ds.PatientName = "Syntheticzorvak^Ada"
    assert all("zorvak" not in str(c).lower() for c in categorize(ds))
