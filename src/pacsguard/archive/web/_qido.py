"""QIDO-RS (PS3.18 10.6): search for studies, series and instances with the archive's one query
engine (`ArchiveService.query`, the same as C-FIND: matching, character handling, result cap).

Query parameters: ``{attributeID}={value}`` (a keyword such as ``PatientID`` or a tag such as
``00100020``; several UIDs separated by commas or backslashes are UID list matching),
``includefield`` (attribute IDs, comma-separated or repeated, or ``all``), ``limit``,
``offset`` and ``fuzzymatching``. Fuzzy matching is not supported: ``fuzzymatching=true`` gets
literal matching and the ``Warning: 299`` PS3.18 8.3.4.4 prescribes. Matching on an attribute
the index does not hold is answered the same way (PS3.4 C.2.2.1.3 lets C-FIND ignore it; the
Warning says so). A parameter that is not an attribute or is malformed is a 400.

No match is 200 with an empty array, as DICOM CP-2473 (2025) corrects PS3.18 8.3.4.4.1's 204
(a 204 must carry no content, RFC 9110 15.3.5; C-FIND calls zero matches a success).

The engine pages (`offset`, `limit`, capped by `[server] find_result_cap`) in one stable order
and returns typed matches; results are DICOM JSON (PS3.18 F.2) from `archive.dicom_json`, the
same matches C-FIND identifiers are built from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.datastructures import QueryParams

from pacsguard.archive.dicom_json import dicom_json
from pacsguard.archive.index.query import FIELDS
from pacsguard.archive.model import QueryRequest, is_valid_uid
from pacsguard.archive.security.principal import Principal
from pacsguard.archive.service import ArchiveService
from pacsguard.archive.web._errors import WebError
from pacsguard.dicom.levels import Level, QueryRoot

_TAG: Final = re.compile(r"^[0-9A-Fa-f]{8}$")
_CONTROL: Final = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
#: Default return attributes (PS3.18 Tables 10.6.3-3 to -5), those the archive can answer.
DEFAULT_FIELDS: Final[Mapping[Level, tuple[str, ...]]] = {
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    ),
    Level.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber"),
}
#: Attributes the query engine computes rather than matches.
_COMPUTED: Final = frozenset(
    {
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
    }
)
_LEVEL_ORDER: Final = (Level.STUDY, Level.SERIES, Level.IMAGE)
MAX_LIMIT: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed QIDO-RS request: what to ask the engine and what to tell the client."""

    request: QueryRequest
    warnings: tuple[str, ...] = field(default=())


def _attribute(identifier: str) -> str:
    """The dictionary keyword of a keyword or tag attribute ID; WebError(400) otherwise."""
    if _TAG.match(identifier):
        keyword = keyword_for_tag(int(identifier, 16))
    else:
        keyword = identifier if tag_for_keyword(identifier) is not None else ""
    if not keyword:
        raise WebError(400, f"query parameter {identifier[:64]!r} is not a DICOM attribute")
    return keyword


def _number(params: QueryParams, name: str, low: int) -> int | None:
    values = params.getlist(name)
    if not values:
        return None
    if len(values) > 1 or not values[0].isdigit() or not low <= int(values[0]) <= MAX_LIMIT:
        raise WebError(400, f"{name} must be one whole number from {low} to {MAX_LIMIT}")
    return int(values[0])


def parse_search(level: Level, path_uids: Mapping[str, str], params: QueryParams) -> Search:
    """A Search from a QIDO-RS URL: `path_uids` are the UIDs of the resource path
    (``/studies/{uid}/series`` fixes StudyInstanceUID); WebError(400) for bad input."""
    warnings: list[str] = []
    keys: dict[str, str] = dict.fromkeys(DEFAULT_FIELDS[level], "")
    for parent in _LEVEL_ORDER[: _LEVEL_ORDER.index(level)]:
        keys.update(dict.fromkeys(DEFAULT_FIELDS[parent], ""))
    fuzzy = params.getlist("fuzzymatching")
    if fuzzy and (len(fuzzy) > 1 or fuzzy[0].lower() not in {"true", "false"}):
        raise WebError(400, "fuzzymatching must be true or false")
    if fuzzy and fuzzy[0].lower() == "true":
        warnings.append(
            "The fuzzymatching parameter is not supported. Only literal matching has been "
            "performed."
        )
    for raw in params.getlist("includefield"):
        for identifier in (p.strip() for p in raw.split(",")):
            if identifier == "all":
                for own in _LEVEL_ORDER[: _LEVEL_ORDER.index(level) + 1]:
                    keys.update({k: keys.get(k, "") for k in _level_fields(own)})
            elif identifier:
                keyword = _attribute(identifier)
                keys.setdefault(keyword, "")
    unsupported: list[str] = []
    seen: set[str] = set()
    for name in params:
        if name in _CONTROL:
            continue
        keyword = _attribute(name)
        values = params.getlist(name)
        if len(values) > 1 or keyword in seen:
            raise WebError(400, f"{name[:64]} is given more than once")
        seen.add(keyword)
        value = values[0]
        if dictionary_VR(tag_for_keyword(keyword) or 0) == "UI":
            value = value.replace(",", "\\")
        if value and (keyword not in FIELDS or keyword in _COMPUTED):
            unsupported.append(keyword)
        keys[keyword] = value
    for keyword, uid in path_uids.items():
        keys[keyword] = uid
    if unsupported:
        warnings.append(
            "The following attributes are not supported for matching and were ignored: "
            + ", ".join(sorted(unsupported))
        )
    limit = _number(params, "limit", 1)
    offset = _number(params, "offset", 0) or 0
    request = QueryRequest(
        root=QueryRoot.STUDY,
        level=level,
        keys=keys,
        limit=limit if limit is not None else MAX_LIMIT,
        offset=offset,
    )
    return Search(request, tuple(warnings))


def _level_fields(level: Level) -> tuple[str, ...]:
    own = tuple(k for k, f in FIELDS.items() if f.level is level)
    return DEFAULT_FIELDS[level] + tuple(k for k in own if k not in DEFAULT_FIELDS[level])


def check_uid(value: str, what: str) -> str:
    """A path segment that must be a UID (it may become a key): WebError(400) otherwise."""
    if not is_valid_uid(value):
        raise WebError(400, f"{what} is not a valid UID (digits and dots, at most 64)")
    return value


def run_search(
    service: ArchiveService, principal: Principal, search: Search
) -> tuple[list[dict[str, Any]], bool]:
    """(DICOM JSON objects of the page asked for, whether more matches follow it). Blocking;
    Denied, QueryError and AuditLogError pass through."""
    answer = service.query(principal, search.request)
    return [dicom_json(match.attributes) for match in answer], answer.more


def warning_header(warnings: Sequence[str]) -> dict[str, str]:
    """PS3.18 8.3.4.4 / 8.4.2: ``Warning: 299 <server>: "<text>"`` headers, comma-joined."""
    if not warnings:
        return {}
    quoted = (w.replace('"', "'") for w in warnings)
    return {"Warning": ", ".join(f'299 pacsguard: "{w}"' for w in quoted)}
