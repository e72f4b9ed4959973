"""Identifier decoding: C-FIND/C-GET/C-MOVE identifiers as the DIMSE front end reads them
(`dimse.decode_dataset`, pydicom underneath) and turns them into archive requests
(`identifiers.query_from_identifier`, `identifiers.retrieve_keys`), then the matching keys into
terms (`index.matching.parse`, the query engine's parser). Every step either gives a result that
agrees with the identifier pydicom decoded, or raises its documented error: None for an
undecodable identifier (status 0xC000), BadIdentifier (0xA900), QueryError (0xA900).

Input: first byte bit 0 = Implicit VR, bit 1 = Study Root; the rest is the identifier."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsguard.archive.dimse.identifiers import (
    BadIdentifier,
    query_from_identifier,
    retrieve_keys,
)
from pacsguard.archive.index.matching import parse
from pacsguard.archive.index.query import FIELDS
from pacsguard.archive.model import QueryError
from pacsguard.dicom.dimse import decode_dataset, encode_dataset
from pacsguard.dicom.levels import Level, QueryRoot
from tests.fuzz.harness import Defect, Harness


def check(data: bytes) -> None:
    if not data:
        return
    syntax = ImplicitVRLittleEndian if data[0] & 1 else ExplicitVRLittleEndian
    root = QueryRoot.STUDY if data[0] & 2 else QueryRoot.PATIENT
    identifier = decode_dataset(BytesIO(data[1:]), syntax)
    if identifier is None:
        return
    level_value = identifier.get("QueryRetrieveLevel")
    level_text = level_value.strip().upper() if isinstance(level_value, str) else None
    try:
        request = query_from_identifier(identifier, root)
    except BadIdentifier:
        pass
    else:
        if request.level.name != level_text:
            raise Defect(f"level {request.level.name}, identifier says {level_text!r:.40}")
        keywords = {e.keyword for e in identifier}
        if not set(request.keys) <= keywords:
            raise Defect("query keys that are not in the identifier")
        for keyword, value in request.keys.items():
            field = FIELDS.get(keyword)
            if field is not None:
                # the query engine's parser of matching keys (wildcards, ranges, UID lists);
                # building SQL from the terms is SQLAlchemy's, and under atheris it grew the
                # worker by ~10 KB per input (flat in plain Python): left to the unit tests
                with contextlib.suppress(QueryError):
                    parse(keyword, field.kind, value)
    try:
        level, values = retrieve_keys(identifier)
    except BadIdentifier:
        return
    if level.name != level_text or not values:
        raise Defect("retrieve keys at the wrong level, or none")
    if any(not v or "\\" in v or v != v.strip() for v in values):
        raise Defect("a retrieve key value that is empty, padded or multi-valued")


def seeds() -> Iterator[bytes]:
    for syntax, flag in ((ExplicitVRLittleEndian, 0), (ImplicitVRLittleEndian, 1)):
        for level in Level:
            ds = Dataset()
            ds.QueryRetrieveLevel = level.name
            ds.PatientID = "LAB-0001"
            ds.PatientName = "DOE*^J?"
            ds.StudyDate = "20200101-20201231"
            ds.StudyTime = ""
            ds.ModalitiesInStudy = ["CT", "MR"]
            ds.StudyInstanceUID = [f"1.2.826.0.1.3680043.8.498.{n}" for n in (1, 2)]
            ds.SeriesInstanceUID = ""
            ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.3"
            ds.NumberOfStudyRelatedInstances = ""
            ds.SpecificCharacterSet = "ISO_IR 192"
            yield bytes([flag | 2]) + encode_dataset(ds, syntax).getvalue()


HARNESS = Harness(
    name="identifiers",
    check=check,
    seeds=seeds,
)
