"""DICOM JSON (PS3.18 F.2) from typed matches, against pydicom's `Dataset.to_json_dict` as the
oracle: hand-picked values for each VR the index returns, and every indexed attribute of a
synthetic archive as ingest reads it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacsguard.archive.dicom_json import dicom_json
from pacsguard.archive.model import Match
from pacsguard.archive.service import INDEXED_KEYWORDS, _header_by_pydicom
from pacsguard.archive.service.query import element_of, match_from_row
from pacsguard.dicom.levels import Level
from pacsguard.lab.synth import build_dataset, generate_archive


def _oracle(row: dict[str, str]) -> dict[str, Any]:
    """pydicom's DICOM JSON of the same values, given as DICOM text."""
    ds = Dataset()
    for keyword, raw in row.items():
        element = element_of(keyword)
        if element is None or keyword == "QueryRetrieveLevel":
            continue
        tag, vr = element
        ds.add(DataElement(tag, vr, raw or None, validation_mode=config.IGNORE))
    return ds.to_json_dict()


def _ours(level: Level, row: dict[str, str]) -> dict[str, Any]:
    built = dicom_json(match_from_row(level, row).attributes)
    assert json.loads(json.dumps(built)) == built  # plain JSON types only
    return built


JAPANESE = "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046"
ROWS = [
    pytest.param({"PatientName": "Doe^John", "PatientID": "P1"}, id="pn and lo"),
    pytest.param({"PatientName": JAPANESE}, id="pn three groups"),
    pytest.param({"PatientName": "Doe^J="}, id="pn empty last group"),
    pytest.param({"PatientName": "=\u738b^\u5c0f\u6771"}, id="pn ideographic only"),
    pytest.param({"PatientName": "M\u00fcller^Hans", "PatientSex": ""}, id="unicode, empty"),
    pytest.param({"SeriesNumber": "3", "InstanceNumber": "-12"}, id="is"),
    pytest.param({"NumberOfStudyRelatedInstances": "1200"}, id="count"),
    pytest.param({"ModalitiesInStudy": "CT\\MR\\SR"}, id="cs multi"),
    pytest.param({"StudyDate": "20200105", "StudyTime": "101500.123"}, id="da tm"),
    pytest.param({"StudyInstanceUID": "1.2.840.99.1", "SOPClassUID": ""}, id="ui"),
    pytest.param({"StudyDescription": "50% off\\CT", "AccessionNumber": "ACC_3%"}, id="lo sh"),
    pytest.param({"QueryRetrieveLevel": "STUDY", "NoSuchKeyword": "x", "StudyID": "1"}, id="drop"),
]


@pytest.mark.parametrize("row", ROWS)
def test_dicom_json_is_what_pydicom_makes(row: dict[str, str]) -> None:
    assert _ours(Level.STUDY, row) == _oracle(row)


def test_every_indexed_attribute_of_a_synthetic_archive() -> None:
    archive = generate_archive(7, 4, studies_per_patient=(1, 2), series_per_study=(1, 2),
                               instances_per_series=(1, 2))  # fmt: skip
    compared = 0
    for patient, study, series, instance in archive.walk():
        row = _header_by_pydicom(build_dataset(patient, study, series, instance))
        row = {k: v for k, v in row.items() if k in INDEXED_KEYWORDS}
        assert _ours(Level.IMAGE, row) == _oracle(row)
        compared += 1
    assert compared >= 4


def test_tags_are_sorted_and_hex_upper_case() -> None:
    built = _ours(Level.STUDY, {"StudyInstanceUID": "1.2", "AccessionNumber": "A"})
    assert list(built) == ["00080050", "0020000D"]


def test_an_is_value_that_is_not_a_number_stays_text() -> None:
    match = match_from_row(Level.SERIES, {"SeriesNumber": "1\\x"})
    assert isinstance(match, Match)
    assert dicom_json(match.attributes) == {"00200011": {"vr": "IS", "Value": [1, "x"]}}
