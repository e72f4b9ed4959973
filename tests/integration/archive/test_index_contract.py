"""The IndexStore contract, run on every back end: SQLite in a temp dir (plain and encrypted
with SQLCipher), a real PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from pacsguard.archive.index import IndexStore
from pacsguard.archive.index import sql as sql_module
from pacsguard.archive.index.migrate import current_revision, head_revision
from pacsguard.archive.index.schema import metadata
from pacsguard.archive.index.sql import SqlIndex, open_engine
from pacsguard.archive.model import (
    AddOutcome,
    HierarchyError,
    InstanceRecord,
    QueryError,
    QueryRequest,
)
from pacsguard.dicom.levels import Level, QueryRoot

from .conftest import IndexTarget

CT = "1.2.840.10008.5.1.4.1.1.2"
P, S = QueryRoot.PATIENT, QueryRoot.STUDY


def rec(sop: str, series: str, study: str, patient: str, **values: str) -> InstanceRecord:
    """An instance record with UIDs under 1.2.3. and a hash derived from its SOP UID."""
    return InstanceRecord(
        sop_instance_uid=f"1.2.3.{sop}",
        sop_class_uid=CT,
        series_instance_uid=f"1.2.2.{series}",
        study_instance_uid=f"1.2.1.{study}",
        patient_id=patient,
        blob_key=f"1.2.3.{sop}",
        size=len(sop) * 100,
        sha256=hashlib.sha256(sop.encode()).hexdigest(),
        **values,  # type: ignore[arg-type]
    )


JOHN = {"patient_name": "Doe^John", "patient_birth_date": "19700101", "patient_sex": "M"}
JANE = {"patient_name": "DOE^JANE", "patient_birth_date": "19851231", "patient_sex": "F"}
HANS = {"patient_name": "Müller^Hans"}
STUDY1 = {
    "study_date": "20200105",
    "study_time": "101500",
    "study_id": "1",
    "accession_number": "ACC1",
    "study_description": "CT CHEST",
    "referring_physician_name": "House^Gregory",
}
STUDY2 = {"study_date": "20210610", "study_time": "083000", "accession_number": "ACC2"}
STUDY3 = {"study_date": "20201231", "study_time": "235959", "accession_number": "ACC_3%"}
STUDY3 |= {"study_description": "50% off"}

CORPUS = [
    rec("1", "11", "1", "P1", **JOHN, **STUDY1, modality="CT", series_number="1"),
    rec("2", "11", "1", "P1", **JOHN, **STUDY1, modality="CT", series_number="1"),
    rec("3", "11", "1", "P1", **JOHN, **STUDY1, modality="CT", series_number="1"),
    rec("4", "12", "1", "P1", **JOHN, **STUDY1, modality="SR", series_number="2"),
    rec("5", "21", "2", "P1", **JOHN, **STUDY2, modality="MR", series_number="1"),
    rec("6", "21", "2", "P1", **JOHN, **STUDY2, modality="MR", series_number="1"),
    rec("7", "31", "3", "P2", **JANE, **STUDY3, modality="CT", instance_number="7"),
    rec("8", "41", "4", "P3", **HANS, modality="US", series_number="3"),
]


@pytest.fixture
def index(index_target: IndexTarget) -> Iterator[SqlIndex]:
    store = SqlIndex(index_target.url, key=index_target.key)
    yield store
    store.close()


@pytest.fixture
def loaded(index: SqlIndex) -> SqlIndex:
    for record in CORPUS:
        assert index.add(record) is AddOutcome.INSERTED
    return index


def find(index: IndexStore, root: QueryRoot, level: Level, **keys: str) -> list[dict[str, str]]:
    return list(index.find(QueryRequest(root, level, keys)))


def uids(results: list[dict[str, str]], key: str = "StudyInstanceUID") -> list[str]:
    return sorted(result[key] for result in results)


def test_sql_index_is_an_index_store(index: SqlIndex) -> None:
    store: IndexStore = index
    assert store.get("1.2.3.999") is None


# -- schema and migrations -------------------------------------------------------------------


def test_migrations_create_the_schema_from_empty_and_match_the_code(
    index_target: IndexTarget,
) -> None:
    engine = open_engine(index_target.url, key=index_target.key)
    try:
        assert not inspect(engine).get_table_names()
        SqlIndex(index_target.url, key=index_target.key).close()
        # reopening an up-to-date index is a no-op
        SqlIndex(index_target.url, key=index_target.key).close()
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision() is not None
            tables = set(inspect(conn).get_table_names())
            assert {"patients", "studies", "series", "instances", "alembic_version"} <= tables
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
            assert diff == []
    finally:
        engine.dispose()


def test_a_failed_statement_names_no_parameter_value(index_target: IndexTarget) -> None:
    """The archive logs index errors (a full disk, a lost server): their text must not carry
    the statement's values, which are patient names and IDs."""
    engine = open_engine(index_target.url, key=index_target.key)
    try:
        with pytest.raises(DBAPIError) as raised, engine.connect() as conn:
            conn.execute(text("INSERT INTO no_such_table VALUES (:name)"), {"name": "Doe^Secret"})
    finally:
        engine.dispose()
    assert "Secret" not in str(raised.value)
    assert "no_such_table" in str(raised.value)  # the statement itself is still named


def test_sqlite_runs_durable_wal_with_foreign_keys(tmp_path: Path) -> None:
    SqlIndex(f"sqlite:///{tmp_path / 'i.db'}").close()
    assert (tmp_path / "i.db").stat().st_mode & 0o077 == 0  # patient data: owner only
    # Closed before the index opens: the stdlib's SQLite and SQLCipher's are two libraries in
    # one process, and closing one's file drops the other's POSIX locks on it (disk I/O error).
    with contextlib.closing(sqlite3.connect(tmp_path / "i.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    index = SqlIndex(f"sqlite:///{tmp_path / 'i.db'}")
    try:
        with index._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        index.add(rec("1", "11", "1", "P1"))
        index.add(rec("2", "11", "1", "P1"))  # through a driver connection of its own
        (driver,) = index._driver_insert._idle
        pragmas = [driver.execute(f"PRAGMA {p}").fetchone()[0] for p in _DURABILITY_PRAGMAS]
        assert pragmas == [2, 1, 30000, "wal", 2]  # temp_store 2: MEMORY
    finally:
        index.close()


_DURABILITY_PRAGMAS = (
    "synchronous",
    "foreign_keys",
    "busy_timeout",
    "journal_mode",
    "temp_store",
)


def test_in_memory_and_unknown_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="file path"):
        SqlIndex("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        SqlIndex("mysql://u@127.0.0.1/db")


# -- add, get, duplicates --------------------------------------------------------------------


def test_add_then_get_returns_every_field(index: SqlIndex) -> None:
    record = rec("9", "91", "9", "P9", **JOHN, **STUDY1, modality="CT", series_number="4")
    record = dataclasses.replace(
        record, instance_number="12", transfer_syntax_uid="1.2.840.10008.1.2.1"
    )
    assert index.add(record) is AddOutcome.INSERTED
    assert index.get(record.sop_instance_uid) == record
    assert index.get("1.2.3.404") is None


def test_duplicate_with_same_bytes_is_identical_and_changes_nothing(loaded: SqlIndex) -> None:
    again = dataclasses.replace(CORPUS[0], patient_name="Someone^Else", blob_key="1.9")
    assert loaded.add(again) is AddOutcome.DUPLICATE_IDENTICAL
    assert loaded.get(CORPUS[0].sop_instance_uid) == CORPUS[0]


def test_duplicate_with_other_bytes_is_a_conflict_and_keeps_the_first(loaded: SqlIndex) -> None:
    other = dataclasses.replace(CORPUS[0], sha256="f" * 64, size=1)
    assert loaded.add(other) is AddOutcome.DUPLICATE_CONFLICT
    assert loaded.get(CORPUS[0].sop_instance_uid) == CORPUS[0]
    # even when the conflicting copy names a new series, study and patient: nothing is created
    moved = dataclasses.replace(
        other, series_instance_uid="1.7.1", study_instance_uid="1.7.2", patient_id="NEW"
    )
    assert loaded.add(moved) is AddOutcome.DUPLICATE_CONFLICT
    assert find(loaded, P, Level.PATIENT, PatientID="NEW") == []


def test_a_series_under_another_study_is_refused(loaded: SqlIndex) -> None:
    stray = rec("50", "11", "50", "P1", **JOHN)  # series 11 belongs to study 1
    with pytest.raises(HierarchyError, match="series"):
        loaded.add(stray)
    assert loaded.get(stray.sop_instance_uid) is None
    assert find(loaded, S, Level.STUDY, StudyInstanceUID="1.2.1.50") == []


def test_a_study_under_another_patient_is_refused(loaded: SqlIndex) -> None:
    stray = rec("51", "51", "1", "INTRUDER")  # study 1 belongs to P1
    with pytest.raises(HierarchyError, match="study"):
        loaded.add(stray)
    assert find(loaded, P, Level.PATIENT, PatientID="INTRUDER") == []


@pytest.mark.parametrize("field", ["sop_instance_uid", "series_instance_uid", "study_instance_uid"])
@pytest.mark.parametrize("bad", ["", "../etc/passwd", "1.2.*", "1..2", "1" * 65])
def test_records_with_invalid_uids_are_refused(index: SqlIndex, field: str, bad: str) -> None:
    with pytest.raises(ValueError, match=field):
        index.add(dataclasses.replace(CORPUS[0], **{field: bad}))  # type: ignore[arg-type]


# -- find: levels, roots, return keys --------------------------------------------------------


def test_patient_level_in_patient_root_with_counts(loaded: SqlIndex) -> None:
    results = find(
        loaded,
        P,
        Level.PATIENT,
        PatientName="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    by_id = {r["PatientID"]: r for r in results}
    assert set(by_id) == {"P1", "P2", "P3"}
    assert by_id["P1"] == {
        "PatientName": "Doe^John",
        "NumberOfPatientRelatedStudies": "2",
        "NumberOfPatientRelatedSeries": "3",
        "NumberOfPatientRelatedInstances": "6",
        "PatientID": "P1",
    }
    assert by_id["P3"]["NumberOfPatientRelatedInstances"] == "1"


def test_study_root_has_no_patient_level(loaded: SqlIndex) -> None:
    with pytest.raises(QueryError, match="PATIENT"):
        loaded.find(QueryRequest(S, Level.PATIENT, {"PatientID": ""}))


@pytest.mark.parametrize("root", [P, S])
def test_study_level_matches_and_returns_patient_keys(loaded: SqlIndex, root: QueryRoot) -> None:
    results = find(
        loaded,
        root,
        Level.STUDY,
        PatientName="doe*",
        PatientBirthDate="",
        StudyDate="",
        AccessionNumber="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        NumberOfPatientRelatedStudies="",
    )
    assert uids(results) == ["1.2.1.1", "1.2.1.2", "1.2.1.3"]
    first = next(r for r in results if r["StudyInstanceUID"] == "1.2.1.1")
    assert first["PatientName"] == "Doe^John"
    assert first["PatientBirthDate"] == "19700101"
    assert first["StudyDate"] == "20200105"
    assert first["ModalitiesInStudy"] == "CT\\SR"
    assert first["NumberOfStudyRelatedSeries"] == "2"
    assert first["NumberOfStudyRelatedInstances"] == "4"
    assert first["NumberOfPatientRelatedStudies"] == "2"
    # the unique keys of the root's levels come back unasked
    assert ("PatientID" in first) is (root is P)


def test_series_level_returns_the_keys_of_its_study(loaded: SqlIndex) -> None:
    results = find(
        loaded,
        S,
        Level.SERIES,
        StudyInstanceUID="1.2.1.1",
        Modality="",
        SeriesNumber="",
        NumberOfSeriesRelatedInstances="",
        StudyDescription="",
    )
    assert results == [
        {
            "StudyInstanceUID": "1.2.1.1",
            "Modality": "CT",
            "SeriesNumber": "1",
            "NumberOfSeriesRelatedInstances": "3",
            "StudyDescription": "CT CHEST",
            "SeriesInstanceUID": "1.2.2.11",
        },
        {
            "StudyInstanceUID": "1.2.1.1",
            "Modality": "SR",
            "SeriesNumber": "2",
            "NumberOfSeriesRelatedInstances": "1",
            "StudyDescription": "CT CHEST",
            "SeriesInstanceUID": "1.2.2.12",
        },
    ]


def test_image_level_in_patient_root(loaded: SqlIndex) -> None:
    results = find(
        loaded, P, Level.IMAGE, SeriesInstanceUID="1.2.2.31", SOPClassUID="", InstanceNumber=""
    )
    assert results == [
        {
            "SeriesInstanceUID": "1.2.2.31",
            "SOPClassUID": CT,
            "InstanceNumber": "7",
            "PatientID": "P2",
            "StudyInstanceUID": "1.2.1.3",
            "SOPInstanceUID": "1.2.3.7",
        }
    ]


def test_unknown_keys_and_keys_below_the_level_come_back_empty_and_unmatched(
    loaded: SqlIndex,
) -> None:
    results = find(
        loaded,
        S,
        Level.STUDY,
        InstitutionName="Nowhere",
        Modality="XX",
        SOPInstanceUID="9.9",
        NumberOfSeriesRelatedInstances="",
        QueryRetrieveLevel="",
    )
    assert len(results) == 4
    assert all(r["InstitutionName"] == r["Modality"] == r["SOPInstanceUID"] == "" for r in results)
    assert all(r["NumberOfSeriesRelatedInstances"] == "" for r in results)
    assert all(r["QueryRetrieveLevel"] == "STUDY" for r in results)


def test_limit_caps_the_results(loaded: SqlIndex) -> None:
    assert len(list(loaded.find(QueryRequest(S, Level.STUDY, {}, limit=2)))) == 2
    assert len(list(loaded.find(QueryRequest(P, Level.IMAGE, {}, limit=5)))) == 5
    assert len(list(loaded.find(QueryRequest(P, Level.IMAGE, {}, limit=500)))) == 8
    with pytest.raises(QueryError, match="limit"):
        loaded.find(QueryRequest(S, Level.STUDY, {}, limit=0))


def _page(index: IndexStore, level: Level, offset: int, limit: int, **keys: str) -> list[str]:
    unique = {Level.STUDY: "StudyInstanceUID", Level.IMAGE: "SOPInstanceUID"}[level]
    request = QueryRequest(P, level, keys, limit=limit, offset=offset)
    return [r[unique] for r in index.find(request)]


@pytest.mark.parametrize("level", [Level.STUDY, Level.IMAGE])
def test_offset_and_limit_page_through_one_stable_order(loaded: SqlIndex, level: Level) -> None:
    everything = _page(loaded, level, 0, 100)
    # The order is the order of first storage (CORPUS's), the same on every call.
    stored = list(dict.fromkeys(
        r.study_instance_uid if level is Level.STUDY else r.sop_instance_uid for r in CORPUS
    ))  # fmt: skip
    assert everything == stored == _page(loaded, level, 0, 100)
    for size in (1, 2, 3):
        pages = [_page(loaded, level, start, size) for start in range(0, len(everything), size)]
        assert [uid for page in pages for uid in page] == everything
    assert _page(loaded, level, len(everything), 5) == []
    # Matching narrows first, then the page is cut from the matches in the same order.
    assert (
        _page(loaded, level, 1, 2, PatientID="P1")
        == [uid for uid in everything if uid in _page(loaded, level, 0, 100, PatientID="P1")][1:3]
    )


def test_later_entities_come_after_every_page_already_read(loaded: SqlIndex) -> None:
    first = _page(loaded, Level.STUDY, 0, 2)
    loaded.add(rec("9", "51", "0", "P9"))  # UID 1.2.1.0 sorts before every stored study
    assert _page(loaded, Level.STUDY, 0, 2) == first
    assert _page(loaded, Level.STUDY, 4, 5) == ["1.2.1.0"]


def test_a_study_date_range_pages_in_date_order(loaded: SqlIndex) -> None:
    loaded.add(rec("9", "51", "5", "P9", study_date="20200105"))  # stored last, same day as 1
    wanted = {"StudyDate": "20200101-20211231"}
    everything = _page(loaded, Level.STUDY, 0, 100, **wanted)
    assert everything == ["1.2.1.1", "1.2.1.5", "1.2.1.3", "1.2.1.2"]  # by date, then storage
    pages = [_page(loaded, Level.STUDY, start, 1, **wanted) for start in range(4)]
    assert [uid for page in pages for uid in page] == everything


def test_a_negative_offset_is_refused(loaded: SqlIndex) -> None:
    with pytest.raises(QueryError, match="offset"):
        loaded.find(QueryRequest(S, Level.STUDY, {}, offset=-1))


# -- find: every matching kind ---------------------------------------------------------------

STUDY_MATCHES = [
    # universal
    ("StudyDescription", "", ["1", "2", "3", "4"]),
    ("StudyDescription", "*", ["1", "2", "3", "4"]),
    # single value: case-sensitive, except person names
    ("StudyDescription", "CT CHEST", ["1"]),
    ("StudyDescription", "ct chest", []),
    ("PatientName", "doe^john", ["1", "2"]),
    ("PatientName", "MÜLLER^HANS", ["4"]),
    ("ReferringPhysicianName", "HOUSE^GREGORY", ["1"]),
    ("PatientID", "p1", []),
    # wildcards; % and _ in values are literals
    ("PatientName", "DOE^JA?E", ["3"]),
    ("PatientName", "*^j*", ["1", "2", "3"]),
    ("PatientName", "müller*", ["4"]),
    ("StudyDescription", "CT*", ["1"]),
    ("AccessionNumber", "ACC_*", ["3"]),
    ("AccessionNumber", "ACC?", ["1", "2"]),
    ("AccessionNumber", "ACC_3%", ["3"]),
    ("StudyDescription", "50%*", ["3"]),
    ("StudyDescription", "5*%*", ["3"]),
    # lists
    ("AccessionNumber", "ACC1\\ACC2", ["1", "2"]),
    ("StudyInstanceUID", "1.2.1.1\\1.2.1.3\\1.2.1.99", ["1", "3"]),
    ("PatientID", "P2\\P3", ["3", "4"]),
    # dates and times: single values and ranges; empty values never match a range
    ("StudyDate", "20200105", ["1"]),
    ("StudyDate", "20200101-20201231", ["1", "3"]),
    ("StudyDate", "-20200105", ["1"]),
    ("StudyDate", "20210101-", ["2"]),
    ("StudyDate", "20200105\\20210101-", ["1", "2"]),
    ("StudyTime", "0800-1100", ["1", "2"]),
    ("StudyTime", "-0830", ["2"]),
    ("StudyTime", "23:59-", ["3"]),
    ("PatientBirthDate", "19800101-", ["3"]),
    ("PatientBirthDate", "19700101", ["1", "2"]),
    # ModalitiesInStudy matches any series of the study
    ("ModalitiesInStudy", "SR", ["1"]),
    ("ModalitiesInStudy", "MR\\US", ["2", "4"]),
    ("ModalitiesInStudy", "C?", ["1", "3"]),
]


@pytest.mark.parametrize(("keyword", "value", "expected"), STUDY_MATCHES)
def test_study_matching(loaded: SqlIndex, keyword: str, value: str, expected: list[str]) -> None:
    results = find(loaded, S, Level.STUDY, **{keyword: value})
    assert uids(results) == [f"1.2.1.{n}" for n in expected]


def test_keys_combine_with_and(loaded: SqlIndex) -> None:
    results = find(loaded, P, Level.STUDY, PatientID="P1", StudyDate="20210101-")
    assert uids(results) == ["1.2.1.2"]


#: Names in several scripts (synthetic; the Japanese one is PS3.5 H.3.1's example).
WIDE = {
    "5": "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
    "6": "Wang^XiaoDong=\u738b^\u5c0f\u6771",
    "7": "\u00c9mile^Zo\u00eb",
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*\u5c71\u7530*", ["5"]),
        ("yamada^tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046", ["5"]),
        ("Wang^XiaoDong=?^??", ["6"]),  # ? is one character, not one byte
        ("Wang^XiaoDong=?^?", []),
        ("*=\u3084\u307e?\u3060*", []),
        ("*=\u3084\u307e\u3060^*", ["5"]),
        ("\u00e9mile^zo\u00cb", ["7"]),  # case folding beyond ASCII
        ("?mile*", ["7"]),
    ],
)
def test_names_in_any_script_match_as_unicode(
    index: SqlIndex, value: str, expected: list[str]
) -> None:
    for n, name in WIDE.items():
        index.add(rec(n, n, n, f"W{n}", patient_name=name))
    results = find(index, S, Level.STUDY, PatientName=value)
    assert uids(results) == [f"1.2.1.{n}" for n in expected]
    assert {r["PatientName"] for r in results} == {WIDE[n] for n in expected}


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("SeriesNumber", "1", ["11", "21"]),
        ("SeriesNumber", "01", ["11", "21"]),
        ("Modality", "CT", ["11", "31"]),
        ("Modality", "*", ["11", "12", "21", "31", "41"]),
        ("SeriesInstanceUID", "1.2.2.12\\1.2.2.41", ["12", "41"]),
        ("StudyDate", "-20201231", ["11", "12", "31"]),
    ],
)
def test_series_matching(loaded: SqlIndex, keyword: str, value: str, expected: list[str]) -> None:
    results = find(loaded, S, Level.SERIES, **{keyword: value})
    assert uids(results, "SeriesInstanceUID") == [f"1.2.2.{n}" for n in expected]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "2020*"),
        ("StudyDate", "last year"),
        ("StudyDate", "2020-01-01"),
        ("StudyTime", "10h"),
        ("StudyInstanceUID", "1.2.*"),
        ("SOPInstanceUID", "1.2.3.x"),
        ("SeriesNumber", "1?"),
    ],
)
def test_invalid_keys_raise_query_error_at_once(loaded: SqlIndex, keyword: str, value: str) -> None:
    with pytest.raises(QueryError, match=keyword):
        loaded.find(QueryRequest(P, Level.IMAGE, {keyword: value}))


# -- instances, remove, blob keys ------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "uid", "expected"),
    [
        (Level.PATIENT, "P1", ["1", "2", "3", "4", "5", "6"]),
        (Level.STUDY, "1.2.1.1", ["1", "2", "3", "4"]),
        (Level.SERIES, "1.2.2.21", ["5", "6"]),
        (Level.IMAGE, "1.2.3.7", ["7"]),
        (Level.STUDY, "1.2.1.404", []),
        (Level.PATIENT, "P404", []),
    ],
)
def test_instances_under_each_level(
    loaded: SqlIndex, level: Level, uid: str, expected: list[str]
) -> None:
    found = loaded.instances(level, uid)
    assert [r.sop_instance_uid for r in found] == [f"1.2.3.{n}" for n in expected]
    by_uid = {r.sop_instance_uid: r for r in CORPUS}
    assert all(r == by_uid[r.sop_instance_uid] for r in found)


def test_remove_updates_counts_and_drops_empty_parents(loaded: SqlIndex) -> None:
    loaded.remove("1.2.3.4")  # the only instance of series 12
    assert loaded.get("1.2.3.4") is None
    assert find(loaded, S, Level.SERIES, SeriesInstanceUID="1.2.2.12") == []
    study = find(loaded, S, Level.STUDY, StudyInstanceUID="1.2.1.1", ModalitiesInStudy="")
    assert study[0]["ModalitiesInStudy"] == "CT"
    loaded.remove("1.2.3.8")  # the only instance of patient P3
    assert find(loaded, P, Level.PATIENT, PatientID="P3") == []
    loaded.remove("1.2.3.404")  # unknown: nothing to do
    assert len(find(loaded, P, Level.IMAGE)) == 6
    # the removed instance can be stored again
    assert loaded.add(CORPUS[3]) is AddOutcome.INSERTED


def test_all_blob_keys_lists_every_instance(
    loaded: SqlIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_module, "_BATCH", 3)  # several pages
    expected = sorted((r.blob_key, r.sha256, r.size) for r in CORPUS)
    assert sorted(loaded.all_blob_keys()) == expected


# -- concurrency -----------------------------------------------------------------------------


def test_two_threads_storing_one_new_study_both_succeed(index: SqlIndex) -> None:
    rounds, per_thread = 5, 12
    errors: list[BaseException] = []
    outcomes: list[AddOutcome] = []
    lock = threading.Lock()

    def store(thread: int, round_: int, barrier: threading.Barrier) -> None:
        try:
            barrier.wait(timeout=30)
            for n in range(per_thread):
                series = f"{round_}{n % 2}"  # both threads create the same two series
                record = rec(f"{round_}.{thread}.{n}", series, str(round_), f"PR{round_}")
                outcome = index.add(record)
                with lock:
                    outcomes.append(outcome)
            # and both store the very same instance at once
            same = rec(f"{round_}.0.999", f"{round_}0", str(round_), f"PR{round_}")
            outcome = index.add(same)
            with lock:
                outcomes.append(outcome)
        except BaseException as error:  # reported below
            errors.append(error)

    for round_ in range(1, rounds + 1):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=store, args=(t, round_, barrier)) for t in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert outcomes.count(AddOutcome.INSERTED) == rounds * (2 * per_thread + 1)
    assert outcomes.count(AddOutcome.DUPLICATE_IDENTICAL) == rounds
    studies = find(index, S, Level.STUDY, NumberOfStudyRelatedInstances="")
    assert len(studies) == rounds
    assert {s["NumberOfStudyRelatedInstances"] for s in studies} == {str(2 * per_thread + 1)}
    assert len(find(index, S, Level.SERIES)) == 2 * rounds


def test_stored_copy_is_hash_and_key(loaded: SqlIndex) -> None:
    first = CORPUS[0]
    assert loaded.stored_copy(first.sop_instance_uid) == (first.sha256, first.blob_key)
    assert loaded.stored_copy("1.2.3.404") is None


def test_known_series_fast_path_keeps_the_hierarchy_honest(loaded: SqlIndex) -> None:
    # Series 11 is known to this index object now; a later instance claiming it under another
    # study or patient must still be refused, and removal must not leave a stale shortcut.
    with pytest.raises(HierarchyError):
        loaded.add(rec("90", "11", "2", "P1", **JOHN))
    with pytest.raises(HierarchyError):
        loaded.add(rec("91", "11", "1", "P2", **JANE))
    assert loaded.add(rec("92", "11", "1", "P1", **JOHN, **STUDY1)) is AddOutcome.INSERTED
    for sop in ("1", "2", "3", "92"):
        loaded.remove(f"1.2.3.{sop}")  # series 11 is gone with its last instance
    assert find(loaded, S, Level.SERIES, SeriesInstanceUID="1.2.2.11") == []
    assert loaded.add(rec("93", "11", "1", "P1", **JOHN, **STUDY1)) is AddOutcome.INSERTED
    series = find(loaded, S, Level.SERIES, SeriesInstanceUID="1.2.2.11")
    assert len(series) == 1


# -- the driver fast path (an instance into a series this index object knows) ----------------


def test_known_series_inserts_run_on_driver_connections_and_commit(
    index: SqlIndex, index_target: IndexTarget
) -> None:
    assert index.add(rec("1", "11", "1", "P1")) is AddOutcome.INSERTED  # the series is new
    seen: list[AddOutcome] = []
    for sop in ("2", "3", "4"):
        assert index.add(rec(sop, "11", "1", "P1"), before_commit=seen.append) is (
            AddOutcome.INSERTED
        )
    assert seen == [AddOutcome.INSERTED] * 3  # once per instance, before its commit
    assert index._driver_insert._open == 1  # one connection, reused
    # another index object sees the rows: they are committed
    other = SqlIndex(index_target.url, key=index_target.key)
    try:
        found = other.instances(Level.SERIES, "1.2.2.11")
        assert sorted(r.sop_instance_uid for r in found) == [f"1.2.3.{n}" for n in "1234"]
        assert other.get("1.2.3.3") == rec("3", "11", "1", "P1")
    finally:
        other.close()


def test_duplicates_in_a_known_series_get_the_general_answers(index: SqlIndex) -> None:
    index.add(rec("1", "11", "1", "P1"))
    index.add(rec("2", "11", "1", "P1"))
    seen: list[AddOutcome] = []
    same = rec("2", "11", "1", "P1")
    assert index.add(same, before_commit=seen.append) is AddOutcome.DUPLICATE_IDENTICAL
    other = dataclasses.replace(same, sha256="0" * 64)
    assert index.add(other, before_commit=seen.append) is AddOutcome.DUPLICATE_CONFLICT
    assert seen == []  # nothing was about to be committed
    assert index.get(same.sop_instance_uid) == same


def test_a_failing_before_commit_on_the_fast_path_commits_nothing(index: SqlIndex) -> None:
    index.add(rec("1", "11", "1", "P1"))

    def fail(_outcome: AddOutcome) -> None:
        raise RuntimeError("audit sink down")

    with pytest.raises(RuntimeError, match="audit sink down"):
        index.add(rec("2", "11", "1", "P1"), before_commit=fail)
    assert index.get("1.2.3.2") is None
    assert index.add(rec("2", "11", "1", "P1")) is AddOutcome.INSERTED  # and writes go on


def test_a_broken_driver_connection_falls_back_to_the_general_path(index: SqlIndex) -> None:
    index.add(rec("1", "11", "1", "P1"))
    index.add(rec("2", "11", "1", "P1"))  # leaves one idle driver connection
    driver = index._driver_insert
    assert driver._open == 1
    driver._idle[0].close()  # gone underneath us (a restarted server, a closed file)
    assert index.add(rec("3", "11", "1", "P1")) is AddOutcome.INSERTED  # via SQLAlchemy
    assert driver._open == 0  # the broken one was dropped, not pooled again
    assert index.add(rec("4", "11", "1", "P1")) is AddOutcome.INSERTED  # a fresh connection
    assert driver._open == 1
    assert len(index.instances(Level.SERIES, "1.2.2.11")) == 4


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_concurrent_known_series_inserts_share_one_commit(index: SqlIndex) -> None:
    """Rows queued while a commit runs are committed together by the next caller; each
    caller returns only once its own row is committed, and a failing before_commit takes
    back that row alone."""
    index.add(rec("1", "11", "1", "P1"))
    driver = index._driver_insert
    first_inside = threading.Event()
    release_first = threading.Event()
    committed_by: dict[str, str] = {}
    results: dict[str, object] = {}

    def blocking(_outcome: AddOutcome) -> None:
        committed_by["2"] = threading.current_thread().name
        first_inside.set()
        assert release_first.wait(10)

    def recording(sop: str) -> Callable[[AddOutcome], None]:
        def notify(_outcome: AddOutcome) -> None:
            committed_by[sop] = threading.current_thread().name
            if sop == "4":
                raise RuntimeError("audit sink down")

        return notify

    def add(sop: str, notify: Callable[[AddOutcome], None]) -> None:
        try:
            results[sop] = index.add(rec(sop, "11", "1", "P1"), before_commit=notify)
        except RuntimeError as error:
            results[sop] = error

    threads = [threading.Thread(target=add, args=("2", blocking), name="t2")]
    threads[0].start()
    assert first_inside.wait(10)  # t2 leads a group of one and is inside its transaction
    for sop in ("3", "4", "5"):
        threads.append(threading.Thread(target=add, args=(sop, recording(sop)), name=f"t{sop}"))
        threads[-1].start()
    _wait_for(lambda: len(driver._queue) == 3)  # queued behind t2's commit
    assert "3" not in results  # not answered before its row is committed
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert results["2"] is AddOutcome.INSERTED
    assert results["3"] is AddOutcome.INSERTED and results["5"] is AddOutcome.INSERTED
    assert isinstance(results["4"], RuntimeError)
    # one of t3/t4/t5 committed all three rows: one transaction, one sync
    assert len({committed_by[s] for s in ("3", "4", "5")}) == 1
    assert committed_by["3"] != committed_by["2"]
    stored = sorted(r.sop_instance_uid for r in index.instances(Level.SERIES, "1.2.2.11"))
    assert stored == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.5"]
