"""C-FIND identifiers and character sets: queries decoded with what they declare, responses
encoded in a declared character set that represents every value (PS3.4 C.4.1.1.3, PS3.5 6.1).

Each response is encoded as the front end sends it and decoded again by pydicom, the oracle."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pacsguard.archive.dimse.charsets import response_character_set
from pacsguard.archive.dimse.identifiers import (
    BadIdentifier,
    declared_character_set,
    query_from_identifier,
    response_identifier,
)
from pacsguard.archive.model import QueryRequest
from pacsguard.archive.service.query import match_from_row
from pacsguard.dicom import uids
from pacsguard.dicom.dimse import decode_dataset, encode_dataset
from pacsguard.dicom.levels import Level, QueryRoot

LATIN1 = "M\u00fcller^J\u00fcrgen"
JAPANESE = "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046"
CHINESE = "Wang^XiaoDong=\u738b^\u5c0f\u6771"
REQUEST = QueryRequest(QueryRoot.STUDY, Level.STUDY, {"PatientName": "", "StudyDescription": ""})
SYNTAXES = [uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN]


def _wire(ds: Dataset, transfer_syntax: str = uids.EXPLICIT_VR_LITTLE_ENDIAN) -> Dataset:
    """`ds` encoded for the wire and decoded again, as the peer receives it."""
    encoded = encode_dataset(ds, transfer_syntax)
    decoded = decode_dataset(encoded, transfer_syntax)
    assert decoded is not None
    return decoded


def _respond(name: str, query: tuple[str, ...], description: str = "CT HEAD") -> Dataset:
    result = {"QueryRetrieveLevel": "STUDY", "PatientName": name, "StudyDescription": description}
    return response_identifier(REQUEST, match_from_row(Level.STUDY, result), query)


@pytest.mark.parametrize("transfer_syntax", SYNTAXES)
@pytest.mark.parametrize(
    ("name", "query", "declared", "raw"),
    [
        pytest.param("Doe^Jane", (), None, b"Doe^Jane", id="ascii, nothing declared"),
        pytest.param("Doe^Jane", ("ISO_IR 100",), "ISO_IR 100", b"Doe^Jane", id="ascii, echo"),
        pytest.param(LATIN1, (), "ISO_IR 192", LATIN1.encode(), id="latin1 as utf8"),
        pytest.param(
            LATIN1, ("ISO_IR 100",), "ISO_IR 100", LATIN1.encode("latin-1"), id="latin1 echo"
        ),
        pytest.param(
            JAPANESE,
            ("", "ISO 2022 IR 87"),
            ["", "ISO 2022 IR 87"],
            b"=\x1b$B;3ED",  # G0 switched to JIS X 0208 for the ideographic group
            id="japanese echo",
        ),
        pytest.param(JAPANESE, ("ISO_IR 100",), "ISO_IR 192", JAPANESE.encode(), id="jp in utf8"),
        pytest.param(
            LATIN1, ("", "ISO 2022 IR 87"), "ISO_IR 192", LATIN1.encode(), id="no u-umlaut in jis"
        ),
        pytest.param(CHINESE, ("ISO_IR 192",), "ISO_IR 192", CHINESE.encode(), id="utf8 echo"),
    ],
)
def test_response_declares_a_character_set_that_holds_every_value(
    transfer_syntax: str,
    name: str,
    query: tuple[str, ...],
    declared: str | list[str] | None,
    raw: bytes,
) -> None:
    response = _respond(name, query)
    encoded = encode_dataset(response, transfer_syntax).getvalue()
    assert raw in encoded
    received = _wire(response, transfer_syntax)
    assert received.get("SpecificCharacterSet") == declared
    assert str(received.PatientName) == name
    assert received.StudyDescription == "CT HEAD"


def test_the_query_charset_is_kept_only_when_every_value_fits() -> None:
    assert response_character_set(("ISO_IR 100",), ["Doe", LATIN1]) == ("ISO_IR 100",)
    assert response_character_set(("ISO_IR 100",), [LATIN1, CHINESE]) == ("ISO_IR 192",)
    assert response_character_set((), ["Doe", "Roe"]) == ()
    # ISO 2022 IR 6 and ISO_IR 6 name ASCII only, although pydicom encodes them as ISO 8859-1.
    assert response_character_set(("ISO 2022 IR 6",), [LATIN1]) == ("ISO_IR 192",)
    # Half-width katakana is in JIS X 0201 (ISO 2022 IR 13), kanji in JIS X 0208 (IR 87).
    katakana = "\uff94\uff8f\uff80\uff9e^\uff80\uff9b\uff73"
    both = ("ISO 2022 IR 13", "ISO 2022 IR 87")
    assert response_character_set(both, [katakana + "=\u5c71\u7530"]) == both
    assert response_character_set(("", "ISO 2022 IR 87"), [katakana]) == ("ISO_IR 192",)


def test_japanese_response_with_katakana_and_kanji_round_trips() -> None:
    name = "\uff94\uff8f\uff80\uff9e^\uff80\uff9b\uff73=\u5c71\u7530^\u592a\u90ce"
    response = _respond(name, ("ISO 2022 IR 13", "ISO 2022 IR 87"))
    received = _wire(response)
    assert received.SpecificCharacterSet == ["ISO 2022 IR 13", "ISO 2022 IR 87"]
    assert str(received.PatientName) == name


def test_a_non_ascii_value_in_an_ascii_only_attribute_is_returned_empty() -> None:
    request = QueryRequest(QueryRoot.STUDY, Level.SERIES, {"Modality": "", "PatientName": ""})
    result = {"Modality": "C\u00c9", "PatientName": "Doe^Jane"}
    received = _wire(response_identifier(request, match_from_row(Level.SERIES, result)))
    assert received.Modality == "" and received.PatientName == "Doe^Jane"
    assert "SpecificCharacterSet" not in received


def _query(charset: str | list[str] | None, name: str) -> Dataset:
    """A query identifier as it arrives: encoded by pydicom in `charset`, then decoded."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.StudyInstanceUID = ""
    return _wire(ds)


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        (None, "M\u00fc*"),  # undeclared: pydicom's default, ISO 8859-1
        ("ISO_IR 100", "M\u00fcller^J?rgen"),
        ("ISO_IR 192", "*\u5c71\u7530*"),
        (["", "ISO 2022 IR 87"], "*\u5c71\u7530^\u592a\u90ce*"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=\u5c71\u7530^\u592a?=*"),
    ],
)
def test_query_values_are_decoded_with_the_declared_charset(
    charset: str | list[str] | None, name: str
) -> None:
    identifier = _query(charset, name)
    request = query_from_identifier(identifier, QueryRoot.STUDY)
    assert request.keys["PatientName"] == name
    assert "SpecificCharacterSet" not in request.keys
    expected = () if charset is None else tuple([charset] if isinstance(charset, str) else charset)
    assert declared_character_set(identifier) == expected


@pytest.mark.parametrize(
    "charset",
    [
        pytest.param("ISO_IR 999", id="unknown"),
        pytest.param("ISO IR 100", id="misspelt"),
        pytest.param(["ISO_IR 192", "ISO 2022 IR 87"], id="utf8 with code extensions"),
    ],
)
def test_a_charset_pydicom_cannot_honour_is_a_bad_identifier(charset: str | list[str]) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.SpecificCharacterSet = charset
    identifier.PatientName = "Doe*"
    with pytest.raises(BadIdentifier, match=r"Specific Character Set|code extensions"):
        query_from_identifier(identifier, QueryRoot.STUDY)


def test_responses_are_not_revalidated_so_no_name_reaches_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stored value pydicom would call invalid (a 70-character name component) is answered
    as stored; pydicom's validation warning would have quoted it into the application log."""
    long_name = "Synthetic" * 7 + "^Jane"
    with caplog.at_level("DEBUG"):
        response = _respond(long_name, ())
        encoded = encode_dataset(response, uids.EXPLICIT_VR_LITTLE_ENDIAN).getvalue()
    assert long_name.encode() in encoded
    assert "Synthetic" not in caplog.text
