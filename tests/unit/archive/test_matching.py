"""DICOM matching (PS3.4 C.2.2.2) to SQL: parsing, escaping, the SQL each dialect gets."""

from __future__ import annotations

import pytest
from sqlalchemy import String, column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from pacsguard.archive.index import matching
from pacsguard.archive.index.matching import Equals, Kind, Range, Wildcard, parse
from pacsguard.archive.index.query import plan
from pacsguard.archive.model import QueryError, QueryRequest
from pacsguard.dicom.levels import Level, QueryRoot

DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect(paramstyle="named")}


def sql(expression: ColumnElement[bool], dialect: str) -> str:
    compiled = expression.compile(dialect=DIALECTS[dialect], compile_kwargs={"literal_binds": True})
    return str(compiled)


def where(kind: Kind, raw: str, dialect: str) -> str:
    terms = parse("Key", kind, raw)
    assert terms is not None
    return sql(matching.condition(column("v", String), terms, dialect), dialect)


@pytest.mark.parametrize("raw", ["", " ", "*", "**", "\\", "*\\X"])
@pytest.mark.parametrize("kind", list(Kind))
def test_universal_matching(kind: Kind, raw: str) -> None:
    assert parse("Key", kind, raw) is None


@pytest.mark.parametrize(
    ("kind", "raw", "terms"),
    [
        (Kind.TEXT, "CT", (Equals(("CT",)),)),
        (Kind.TEXT, " CT ", (Equals(("CT",)),)),
        (Kind.TEXT, "CT\\MR\\CT", (Equals(("CT", "MR")),)),
        (Kind.TEXT, "C*\\MR", (Equals(("MR",)), Wildcard("C*"))),
        (Kind.TEXT, "A?C", (Wildcard("A?C"),)),
        (Kind.NAME, "Doe^JOHN", (Equals(("doe^john",)),)),
        (Kind.NAME, "MÜLLER*", (Wildcard("müller*"),)),
        (Kind.UID, "1.2.3\\1.2.4", (Equals(("1.2.3", "1.2.4")),)),
        (Kind.NUMBER, "007", (Equals(("007", "7")),)),
        (Kind.NUMBER, "7", (Equals(("7",)),)),
        (Kind.DATE, "20200101", (Range("20200101", "20200101"),)),
        (Kind.DATE, "20200101-20201231", (Range("20200101", "20201231"),)),
        (Kind.DATE, "20200101-", (Range("20200101", ""),)),
        (Kind.DATE, "-20201231", (Range("", "20201231"),)),
        (Kind.DATE, "2020\\-1999", (Range("2020", "2020"), Range("", "1999"))),
        (Kind.TIME, "10:15-12", (Range("1015", "12"),)),
        (Kind.TIME, "101500.123456", (Range("101500.123456", "101500.123456"),)),
        (Kind.DATETIME, "20200101120000-", (Range("20200101120000", ""),)),
    ],
)
def test_parse(kind: Kind, raw: str, terms: tuple[matching.Term, ...]) -> None:
    assert parse("Key", kind, raw) == terms


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        (Kind.DATE, "2020*", "not a valid date"),
        (Kind.DATE, "2020?101", "not a valid date"),
        (Kind.DATE, "202001011", "not a valid date"),
        (Kind.DATE, "2020-01-01", "not a value or a range"),
        (Kind.DATE, "yesterday", "not a valid date"),
        (Kind.TIME, "25h", "not a valid date"),
        (Kind.UID, "1.2.*", "not a UID"),
        (Kind.UID, "1.2.3\\x", "not a UID"),
        (Kind.UID, "1..2", "not a UID"),
        (Kind.NUMBER, "1*", "not an integer"),
        (Kind.NUMBER, "one", "not an integer"),
    ],
)
def test_invalid_values_raise_query_error_naming_the_key(
    kind: Kind, raw: str, message: str
) -> None:
    with pytest.raises(QueryError, match=f"StudyDate: .*{message}"):
        parse("StudyDate", kind, raw)


def test_too_many_alternatives_are_refused() -> None:
    raw = "\\".join(f"1.2.{n}" for n in range(matching.MAX_ALTERNATIVES + 1))
    with pytest.raises(QueryError, match="more than"):
        parse("StudyInstanceUID", Kind.UID, raw)


@pytest.mark.parametrize(
    ("pattern", "like"),
    [
        ("DOE*", "DOE%"),
        ("D?E", "D_E"),
        ("100%*", "100\\%%"),
        ("A_B?", "A\\_B_"),
        ("back\\slash*", "back\\\\slash%"),
        ("*", "%"),
    ],
)
def test_like_pattern_escapes_percent_underscore_and_the_escape(pattern: str, like: str) -> None:
    assert matching.like_pattern(pattern) == like


@pytest.mark.parametrize(
    ("pattern", "glob"),
    [("DOE*", "DOE*"), ("D?E", "D?E"), ("[1]*", "[[]1]*"), ("50%_*", "50%_*")],
)
def test_glob_pattern_escapes_brackets(pattern: str, glob: str) -> None:
    assert matching.glob_pattern(pattern) == glob


@pytest.mark.parametrize(
    ("kind", "raw", "dialect", "expected"),
    [
        (Kind.TEXT, "CT", "sqlite", "v = 'CT'"),
        (Kind.TEXT, "CT\\MR", "postgresql", "v IN ('CT', 'MR')"),
        (Kind.TEXT, "50%_*", "postgresql", "v LIKE '50\\%\\_%' ESCAPE '\\'"),
        (Kind.TEXT, "50%_*", "sqlite", "v GLOB '50%_*'"),
        (Kind.NAME, "Doe*", "sqlite", "v GLOB 'doe*'"),
        (Kind.TEXT, "CT\\M?", "sqlite", "v = 'CT' OR (v GLOB 'M?')"),
        (Kind.DATE, "20200101-", "sqlite", "v != '' AND v >= '20200101'"),
        (Kind.DATE, "-20201231", "postgresql", "v != '' AND v <= '20201231~'"),
        (
            Kind.DATE,
            "20200101",
            "sqlite",
            "v != '' AND v >= '20200101' AND v <= '20200101~'",
        ),
        (Kind.UID, "1.2.3", "postgresql", "v = '1.2.3'"),
    ],
)
def test_condition_sql(kind: Kind, raw: str, dialect: str, expected: str) -> None:
    assert where(kind, raw, dialect) == expected


def test_condition_of_no_terms_matches_nothing() -> None:
    nothing = matching.condition(column("v", String), (), "postgresql")
    assert sql(nothing, "postgresql") == "false"


def test_values_are_bound_parameters_not_sql() -> None:
    terms = parse("Key", Kind.TEXT, "x' OR '1'='1")
    assert terms is not None
    compiled = matching.condition(column("v", String), terms, "sqlite").compile(
        dialect=DIALECTS["sqlite"]
    )
    assert "OR" not in str(compiled)
    assert list(compiled.params.values()) == ["x' OR '1'='1"]


@pytest.mark.parametrize("normalized", ["müller^hans", "straße"])
def test_names_compare_case_folded(normalized: str) -> None:
    assert matching.normalize_name(normalized.upper()) == matching.normalize_name(normalized)


# -- whole queries, compiled but not run -----------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_study_query_pages_first_then_counts(dialect: str) -> None:
    request = QueryRequest(
        QueryRoot.STUDY,
        Level.STUDY,
        {"PatientName": "DOE*", "NumberOfStudyRelatedInstances": "", "ModalitiesInStudy": "CT"},
        limit=10,
    )
    text = str(plan(request, dialect).statement.compile(dialect=DIALECTS[dialect]))
    inner = text[text.index("FROM (") :]
    assert "LIMIT" in inner
    assert "patient_name_key" in inner  # PN matches the case-folded column
    assert "EXISTS" in inner  # ModalitiesInStudy matches any series of the study
    # the counts are computed by the outer query, over the page only
    assert text.index("count(*)") < text.index("FROM (")


def test_study_root_refuses_patient_level_and_bad_limits() -> None:
    with pytest.raises(QueryError, match="Study Root"):
        plan(QueryRequest(QueryRoot.STUDY, Level.PATIENT, {}), "sqlite")
    with pytest.raises(QueryError, match="limit"):
        plan(QueryRequest(QueryRoot.PATIENT, Level.PATIENT, {}, limit=-1), "sqlite")


@pytest.mark.parametrize(
    ("keyword", "kind", "raw"),
    [
        ("PatientBirthDate", Kind.DATE, "SECRET-19800101X"),
        ("PatientBirthDate", Kind.DATE, "19800101X"),
        ("StudyInstanceUID", Kind.UID, "1.2.SECRET*"),
        ("SeriesNumber", Kind.NUMBER, "SECRET"),
    ],
)
def test_a_refused_value_is_quoted_to_the_requester_and_never_in_the_reason(
    keyword: str, kind: Kind, raw: str
) -> None:
    """The reason goes to audit lines and logs: a query value may be patient data."""
    with pytest.raises(QueryError) as refused:
        parse(keyword, kind, raw)
    assert "SECRET" in str(refused.value) or "19800101X" in str(refused.value)
    assert "SECRET" not in refused.value.reason and "1980" not in refused.value.reason
    assert refused.value.reason.startswith(keyword)
