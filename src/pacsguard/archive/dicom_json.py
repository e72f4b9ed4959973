"""DICOM JSON (PS3.18 F.2) from typed query matches: what QIDO-RS returns.

Pure: `dicom_json(attributes)` maps each attribute to ``{"vr": ..., "Value": [...]}`` under its
tag as eight upper-case hex digits (F.2.1.1). Values follow F.2.3: IS as JSON numbers, PN as
objects with Alphabetic / Ideographic / Phonetic groups (F.2.2), other strings as strings; an
attribute without values has no "Value" (F.2.5). Only the VRs the index returns are handled
here (text, IS, PN); a sequence or bulk data never comes out of a query.

Why not pydicom's `Dataset.to_json_dict`: it needs a Dataset first, and building one means
pydicom's per-element conversion and validation of every value (whose warnings would quote
patient names into the log); a QIDO page of thousands of matches pays that for nothing. The
unit tests compare with `to_json_dict` as the oracle.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from pacsguard.archive.model import Attribute

_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")


def dicom_json(attributes: Iterable[Attribute]) -> dict[str, dict[str, Any]]:
    """The DICOM JSON object of one match (or any attributes), sorted by tag."""
    out: dict[str, dict[str, Any]] = {}
    for attribute in sorted(attributes, key=lambda a: a.tag):
        element: dict[str, Any] = {"vr": attribute.vr}
        if attribute.values:
            element["Value"] = [_value(attribute.vr, v) for v in attribute.values]
        out[f"{attribute.tag:08X}"] = element
    return out


def _value(vr: str, value: str | int) -> Any:
    if vr == "PN":  # groups up to the last one with text; an empty group before it stays
        groups = str(value).split("=")[: len(_PN_GROUPS)]
        while len(groups) > 1 and not groups[-1]:
            groups.pop()
        return dict(zip(_PN_GROUPS, groups, strict=False))
    return value  # IS: an int already (a JSON number); other VRs: text
