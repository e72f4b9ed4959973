"""What the HTTP tier asks and recognises, from the cited data file `data/http.json`.

DICOMweb roots to query, viewer pages and their patterns, Orthanc's authentication realm and
the short list of default logins (tried only when the user asks). Every entry names its source;
`verified` says whether pacsguard's tests saw it on a running server. A DICOMweb root may name
the `realm` its product's 401 carries (a closed DICOMweb is then recognised, not just refused)
and the `content_type` a QIDO-RS answer must have to count (for generic roots such as `/`,
where other REST APIs also answer `/studies` with JSON).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

FORMAT: Final = "pacsguard.http/1"


class HttpCatalogError(ValueError):
    """The HTTP data file is malformed; the message names the entry."""


@dataclass(frozen=True, slots=True)
class DicomwebRoot:
    path: str
    product: str
    verified: bool
    source: str
    #: The realm of the product's authentication challenge (a 401 on QIDO-RS naming it
    #: identifies the product's DICOMweb as present and closed).
    realm: str | None = None
    #: The media type a QIDO-RS answer must carry to be counted as one (None: any JSON).
    content_type: str | None = None

    def studies_path(self) -> str:
        """The QIDO-RS study search resource below this root."""
        return f"{self.path.rstrip('/')}/studies"


@dataclass(frozen=True, slots=True)
class ViewerRule:
    id: str
    name: str
    path: str
    pattern: re.Pattern[str]
    verified: bool
    source: str


@dataclass(frozen=True, slots=True)
class DefaultCredential:
    id: str
    username: str
    password: str
    source: str

    def __repr__(self) -> str:  # a public default, but still never printed by accident
        return f"DefaultCredential(id={self.id!r}, username={self.username!r})"


@dataclass(frozen=True, slots=True)
class HttpCatalog:
    orthanc_realms: frozenset[str]
    dicomweb_roots: tuple[DicomwebRoot, ...]
    viewers: tuple[ViewerRule, ...]
    default_credentials: tuple[DefaultCredential, ...]


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or " " in value:
        raise HttpCatalogError(f"{where}: 'path' must be an absolute URL path")
    return value


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise HttpCatalogError(f"{where}: missing {key!r}")
    return value


def _optional_text(entry: dict[str, Any], key: str, where: str) -> str | None:
    return None if entry.get(key) is None else _text(entry, key, where)


def parse_catalog(data: Any) -> HttpCatalog:
    """Validate and load the document; HttpCatalogError names the first bad entry."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HttpCatalogError(f"not an HTTP data file: 'format' must be {FORMAT!r}")
    orthanc = data.get("orthanc") or {}
    realms = orthanc.get("realms") or []
    if not all(isinstance(r, str) for r in realms):
        raise HttpCatalogError("orthanc.realms must be strings")
    roots = []
    for n, entry in enumerate(data.get("dicomweb_roots") or []):
        where = f"dicomweb_roots[{n}]"
        roots.append(
            DicomwebRoot(
                _path(entry.get("path"), where).rstrip("/") or "/",
                _text(entry, "product", where),
                bool(entry.get("verified")),
                _text(entry, "source", where),
                _optional_text(entry, "realm", where),
                _optional_text(entry, "content_type", where),
            )
        )
    viewers = []
    for n, entry in enumerate(data.get("viewers") or []):
        where = f"viewers[{n}]"
        try:
            pattern = re.compile(_text(entry, "pattern", where), re.IGNORECASE)
        except re.error as exc:
            raise HttpCatalogError(f"{where}: pattern does not compile ({exc})") from None
        viewers.append(
            ViewerRule(
                _text(entry, "id", where),
                _text(entry, "name", where),
                _path(entry.get("path"), where),
                pattern,
                bool(entry.get("verified")),
                _text(entry, "source", where),
            )
        )
    credentials = []
    for n, entry in enumerate(data.get("default_credentials") or []):
        where = f"default_credentials[{n}]"
        username = _text(entry, "username", where)
        if ":" in username:
            raise HttpCatalogError(f"{where}: a basic-auth user name cannot hold ':'")
        credentials.append(
            DefaultCredential(
                _text(entry, "id", where),
                username,
                _text(entry, "password", where),
                _text(entry, "source", where),
            )
        )
    return HttpCatalog(frozenset(realms), tuple(roots), tuple(viewers), tuple(credentials))


@cache
def default_catalog() -> HttpCatalog:
    text = resources.files("pacsguard.scan").joinpath("data/http.json").read_text("utf-8")
    return parse_catalog(json.loads(text))
