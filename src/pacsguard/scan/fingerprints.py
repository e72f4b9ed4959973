"""Fingerprints -> products -> known vulnerabilities, from the cited data file `data/products.json`.

A server names its software in the A-ASSOCIATE-AC (implementation class UID and version name)
and, on the web tier, in answers such as Orthanc's `/system`. `identify` turns that evidence into
a product and version by the data file's rules; `vulnerabilities_for` lists the CVEs whose
published version range holds that version. Everything here is pure: the probes gather evidence,
checks turn matches into findings.

A remote version string is all a scanner sees. Distributions backport fixes without changing it
(Debian's dcmtk 3.6.7-9~deb12u* still says OFFIS_DCMTK_367), so every match is "by version
only" and the finding says so.

Versions compare as tuples of integers: vendors' versions are dotted numbers, and PEP 440
(`packaging`) would read some of them differently from their vendors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

FORMAT: Final = "pacsguard.products/1"
#: Evidence fields a rule may read; probes fill them (see `evidence_of`).
FIELDS: Final = frozenset(
    {"implementation_class_uid", "implementation_version_name", "http_orthanc_version"}
)
#: Where a vulnerability is reached. Only these make a finding about a scanned server; a
#: client-side flaw (dimse-client) is in the data for completeness but says nothing about it.
SERVER_SURFACES: Final = frozenset({"dimse-server", "file-parsing", "http", "hl7"})
_SURFACES: Final = SERVER_SURFACES | {"dimse-client"}
_DIGIT_SPLITS: Final = frozenset({"major.minor.rest", "major.minor"})
_CVE: Final = re.compile(r"^CVE-\d{4}-\d{4,}$")
_VERSION: Final = re.compile(r"^\d+(?:\.\d+)*$")

Version = tuple[int, ...]


class ProductDataError(ValueError):
    """The product data file is malformed; the message lists every problem found."""


def parse_version(text: str) -> Version:
    """'3.6.7' -> (3, 6, 7); ValueError when `text` is not dotted integers."""
    if not _VERSION.match(text):
        raise ValueError(f"{text!r} is not a dotted version number")
    return tuple(int(part) for part in text.split("."))


def _format(version: Version) -> str:
    return ".".join(str(part) for part in version)


def _from_digits(digits: str, split: str) -> str:
    """'367' -> '3.6.7' (major.minor.rest), '3610' -> '3.6.10'; '518' -> '5.18' (major.minor)."""
    if split == "major.minor":
        return f"{digits[0]}.{int(digits[1:])}"
    return f"{digits[0]}.{digits[1]}.{int(digits[2:])}"


@dataclass(frozen=True, slots=True)
class Rule:
    field: str
    pattern: re.Pattern[str]
    digits: str | None
    source: str

    def version_of(self, value: str) -> str | bool | None:
        """The version the value shows, None if it matches without one, False if no match."""
        found = self.pattern.search(value)
        if found is None:
            return False
        groups = found.groupdict()
        if groups.get("version"):
            return groups["version"]
        if groups.get("digits") and self.digits:
            return _from_digits(groups["digits"], self.digits)
        return None


@dataclass(frozen=True, slots=True)
class ProductInfo:
    id: str
    name: str
    kind: str
    rules: tuple[Rule, ...]
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Vulnerability:
    cve: str
    product: str
    title: str
    surface: str
    cvss_vector: str
    cvss_vector_source: str
    references: tuple[str, ...]
    fixed: Version | None = None
    last_affected: Version | None = None
    fixed_note: str | None = None

    def affects(self, version: Version) -> bool:
        if self.fixed is not None and version >= self.fixed:
            return False
        return not (self.last_affected is not None and version > self.last_affected)

    @property
    def remediation(self) -> str:
        if self.fixed is not None:
            return f"Upgrade to {_format(self.fixed)} or later (or a vendor build with the fix)."
        return self.fixed_note or "Apply the vendor's fix; the advisory names no fixed release."


@dataclass(frozen=True, slots=True)
class Product:
    """What a server runs, as far as its own answers tell."""

    id: str
    name: str
    version: str | None
    #: The evidence field that named it, e.g. "implementation_class_uid".
    basis: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ProductData:
    products: tuple[ProductInfo, ...]
    vulnerabilities: tuple[Vulnerability, ...]

    def identify(self, evidence: Mapping[str, str | None]) -> Product | None:
        """The first product whose rules match, preferring a match that carries a version.

        Server products (Orthanc by its REST API) are tried before the toolkits they embed, so a
        host that showed both is named by what it is, not by the library it links."""
        fallback: Product | None = None
        ordered = sorted(self.products, key=lambda p: p.kind != "server")
        for info in ordered:
            for rule in info.rules:
                value = evidence.get(rule.field)
                if not value:
                    continue
                version = rule.version_of(value)
                if version is False:
                    continue
                product = Product(
                    info.id,
                    info.name,
                    version if isinstance(version, str) else None,
                    rule.field,
                    info.note,
                )
                if product.version is not None:
                    return product
                fallback = fallback or product
        return fallback

    def vulnerabilities_for(self, product: Product) -> tuple[Vulnerability, ...]:
        """CVEs whose range holds the product's version; none when the version is unknown,
        except entries without any range (every version matches)."""
        if product.version is not None:
            try:
                version: Version | None = parse_version(product.version)
            except ValueError:
                return ()
        else:
            version = None
        matched = []
        for vuln in self.vulnerabilities:
            if vuln.product != product.id:
                continue
            unbounded = vuln.fixed is None and vuln.last_affected is None
            if (version is not None and vuln.affects(version)) or (version is None and unbounded):
                matched.append(vuln)
        return tuple(matched)


def validate(data: Any) -> list[str]:
    """Every problem in a product data document (empty when it is sound)."""
    from cvss import CVSS3  # here, not at module level: a scan's start-up never needs it

    problems: list[str] = []
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return [f"not a product data file: 'format' must be {FORMAT!r}"]
    products = data.get("products")
    vulns = data.get("vulnerabilities")
    if not isinstance(products, list) or not isinstance(vulns, list):
        return ["'products' and 'vulnerabilities' must be lists"]
    ids: set[str] = set()
    for n, product in enumerate(products):
        where = f"products[{n}]"
        if not isinstance(product, dict):
            problems.append(f"{where}: not an object")
            continue
        pid = product.get("id")
        if not isinstance(pid, str) or not pid:
            problems.append(f"{where}: missing id")
            continue
        if pid in ids:
            problems.append(f"{where}: duplicate id {pid!r}")
        ids.add(pid)
        for key in ("name", "kind"):
            if not isinstance(product.get(key), str):
                problems.append(f"{where} ({pid}): missing {key}")
        for m, rule in enumerate(product.get("rules") or []):
            problems.extend(_rule_problems(rule, f"{where} ({pid}) rules[{m}]"))
    seen: set[str] = set()
    for n, vuln in enumerate(vulns):
        where = f"vulnerabilities[{n}]"
        if not isinstance(vuln, dict):
            problems.append(f"{where}: not an object")
            continue
        cve = vuln.get("cve")
        if not isinstance(cve, str) or not _CVE.match(cve):
            problems.append(f"{where}: 'cve' must look like CVE-YYYY-NNNN")
            cve = str(cve)
        elif cve in seen:
            problems.append(f"{where}: duplicate {cve}")
        seen.add(cve)
        where = f"{where} ({cve})"
        if vuln.get("product") not in ids:
            problems.append(f"{where}: product {vuln.get('product')!r} is not defined")
        if vuln.get("surface") not in _SURFACES:
            problems.append(f"{where}: surface must be one of {sorted(_SURFACES)}")
        if not isinstance(vuln.get("title"), str) or not vuln["title"]:
            problems.append(f"{where}: missing title")
        refs = vuln.get("references")
        if (
            not isinstance(refs, list)
            or not refs
            or not all(isinstance(r, str) and r.startswith("https://") for r in refs)
        ):
            problems.append(f"{where}: needs at least one https:// reference (its advisory)")
        if vuln.get("cvss_vector_source") not in {"advisory", "derived"}:
            problems.append(f"{where}: cvss_vector_source must be 'advisory' or 'derived'")
        try:
            CVSS3(str(vuln.get("cvss_vector")))
        except Exception as exc:
            problems.append(f"{where}: cvss_vector does not parse ({exc})")
        for key in ("fixed", "last_affected"):
            value = vuln.get(key)
            if value is None:
                continue
            try:
                parse_version(str(value))
            except ValueError as exc:
                problems.append(f"{where}: {key}: {exc}")
        if vuln.get("fixed") is None and not vuln.get("fixed_note"):
            problems.append(f"{where}: without 'fixed', say why in 'fixed_note'")
    return problems


def _rule_problems(rule: Any, where: str) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: not an object"]
    problems = []
    if rule.get("field") not in FIELDS:
        problems.append(f"{where}: field must be one of {sorted(FIELDS)}")
    if not isinstance(rule.get("source"), str) or not rule["source"]:
        problems.append(f"{where}: cite a source for the rule")
    try:
        pattern = re.compile(str(rule.get("pattern")))
    except re.error as exc:
        return [*problems, f"{where}: pattern does not compile ({exc})"]
    if "digits" in pattern.groupindex and rule.get("digits") not in _DIGIT_SPLITS:
        problems.append(
            f"{where}: a 'digits' group needs 'digits' set to one of {sorted(_DIGIT_SPLITS)}"
        )
    return problems


def _version_or_none(value: Any) -> Version | None:
    return None if value is None else parse_version(str(value))


def parse(data: Any) -> ProductData:
    """Build the lookup tables; ProductDataError listing every problem when `data` is unsound."""
    problems = validate(data)
    if problems:
        raise ProductDataError("; ".join(problems))
    products = tuple(
        ProductInfo(
            id=p["id"],
            name=p["name"],
            kind=p["kind"],
            note=p.get("note"),
            rules=tuple(
                Rule(r["field"], re.compile(r["pattern"]), r.get("digits"), r["source"])
                for r in p.get("rules") or []
            ),
        )
        for p in data["products"]
    )
    vulns = tuple(
        Vulnerability(
            cve=v["cve"],
            product=v["product"],
            title=v["title"],
            surface=v["surface"],
            cvss_vector=v["cvss_vector"],
            cvss_vector_source=v["cvss_vector_source"],
            references=tuple(v["references"]),
            fixed=_version_or_none(v.get("fixed")),
            last_affected=_version_or_none(v.get("last_affected")),
            fixed_note=v.get("fixed_note"),
        )
        for v in data["vulnerabilities"]
    )
    return ProductData(products, vulns)


def load(path: Path) -> ProductData:
    return parse(json.loads(path.read_text(encoding="utf-8")))


def default_path() -> Path:
    return Path(str(resources.files("pacsguard.scan").joinpath("data/products.json")))


@cache
def default_data() -> ProductData:
    """The data file shipped with pacsguard (parsed once per process)."""
    return load(default_path())


# -- offline update from an NVD feed ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateSummary:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    skipped: int


def _cpe_product(criteria: str, prefixes: Mapping[str, str]) -> str | None:
    for prefix, product in prefixes.items():
        if criteria.startswith(prefix + ":"):
            return product
    return None


def _nvd_entry(cve: Mapping[str, Any], prefixes: Mapping[str, str]) -> dict[str, Any] | None:
    """One NVD CVE record (API 2.0 `vulnerabilities[].cve`) as a data file entry, or None when
    it names none of our products or has no CVSS 3.x vector."""
    matches = [
        match
        for config in cve.get("configurations") or []
        for node in config.get("nodes") or []
        for match in node.get("cpeMatch") or []
        if match.get("vulnerable") and _cpe_product(str(match.get("criteria", "")), prefixes)
    ]
    if not matches:
        return None
    metrics = cve.get("metrics") or {}
    vector = next(
        (
            m["cvssData"]["vectorString"]
            for key in ("cvssMetricV31", "cvssMetricV30")
            for m in metrics.get(key) or []
            if m.get("type", "Primary") == "Primary"
        ),
        None,
    )
    if vector is None or not str(vector).startswith("CVSS:3"):
        return None
    match = matches[0]
    description = next(
        (d["value"] for d in cve.get("descriptions") or [] if d.get("lang") == "en"), ""
    )
    entry: dict[str, Any] = {
        "cve": cve["id"],
        "product": _cpe_product(str(match["criteria"]), prefixes),
        "fixed": match.get("versionEndExcluding"),
        "surface": "dimse-server",
        "title": " ".join(str(description).split())[:240] or cve["id"],
        "cvss_vector": vector,
        "cvss_vector_source": "advisory",
        "references": [
            f"https://nvd.nist.gov/vuln/detail/{cve['id']}",
            *[
                r["url"]
                for r in (cve.get("references") or [])[:3]
                if str(r.get("url", "")).startswith("https://")
            ],
        ],
    }
    if match.get("versionEndIncluding"):
        entry["last_affected"] = match["versionEndIncluding"]
    if entry["fixed"] is None:
        entry["fixed_note"] = "NVD names no fixed release for this CPE range"
    return entry


def update_from_nvd(data: dict[str, Any], feed: Mapping[str, Any]) -> UpdateSummary:
    """Merge CVEs from an NVD CVE API 2.0 JSON document (downloaded by the user) into `data`,
    in place. A new CVE is added with surface 'dimse-server' (review it: NVD does not say how a
    flaw is reached); an existing one keeps its surface and title and takes NVD's range, vector
    and references. Raises ProductDataError if the result would not validate."""
    prefixes = {
        cpe: str(product["id"]) for product in data["products"] for cpe in product.get("cpe", [])
    }
    known = {v["cve"]: v for v in data["vulnerabilities"]}
    added: list[str] = []
    updated: list[str] = []
    skipped = 0
    for item in feed.get("vulnerabilities") or []:
        entry = _nvd_entry(item.get("cve") or {}, prefixes)
        if entry is None:
            skipped += 1
            continue
        current = known.get(entry["cve"])
        if current is None:
            data["vulnerabilities"].append(entry)
            known[entry["cve"]] = entry
            added.append(entry["cve"])
            continue
        entry["surface"], entry["title"] = current["surface"], current["title"]
        entry["references"] = list(dict.fromkeys([*current["references"], *entry["references"]]))
        if entry != current:
            current.clear()
            current.update(entry)
            updated.append(entry["cve"])
    problems = validate(data)
    if problems:
        raise ProductDataError("; ".join(problems))
    return UpdateSummary(tuple(added), tuple(updated), skipped)
