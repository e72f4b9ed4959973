"""Media types of DICOMweb requests: Accept negotiation and the STOW-RS Content-Type.

Parsing is `email.message`'s (the standard library's RFC 2045 parameter parser), not ours:
quoted parameters, case and whitespace are handled as MIME says.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One media type or range: lower-case type/subtype and its parameters."""

    type: str
    params: dict[str, str]

    def allows(self, media_type: str) -> bool:
        """Whether this range accepts `media_type` (wildcards as RFC 9110 12.5.1 says)."""
        if self.type in ("*/*", media_type):
            return True
        return self.type.endswith("/*") and media_type.startswith(self.type[:-1])


def parse_media_type(value: str) -> MediaRange:
    message = Message()
    message["content-type"] = value
    params = {k.lower(): v for k, v in message.get_params(failobj=[])[1:]}
    return MediaRange(message.get_content_type().lower(), params)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, without q=0 ones; [*/*] when absent or empty."""
    if not header or not header.strip():
        return [MediaRange("*/*", {})]
    ranges: list[MediaRange] = []
    for part in _split(header):
        media = parse_media_type(part)
        if media.params.get("q", "1").strip() in {"0", "0.0", "0.00", "0.000"}:
            continue
        ranges.append(media)
    return ranges


def _split(header: str) -> list[str]:
    """Split an Accept header on the commas outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def wants_multipart(ranges: list[MediaRange], part_type: str) -> MediaRange | None:
    """The Accept range that lets us answer multipart/related with parts of `part_type`
    (``*/*``, ``multipart/related`` with no type or that type, or ``multipart/*``), or None."""
    for media in ranges:
        if media.type in ("*/*", "multipart/*"):
            return media
        if media.type == "multipart/related":
            wanted = media.params.get("type", part_type).lower()
            if wanted in (part_type, "*/*") or MediaRange(wanted, {}).allows(part_type):
                return media
    return None


def wants(ranges: list[MediaRange], media_type: str) -> bool:
    return any(media.allows(media_type) for media in ranges)
