"""Peer-supplied text as it may appear in audit lines and logs: escaped and size-bounded.

A peer chooses its AE titles, its user identity (up to 64 KiB in one PS3.7 item), its token's
claims: echoed whole into every rejection line, they would let one peer fill the disk or forge
line breaks in a log viewer. `shown` keeps a short, printable prefix and says how much was cut.
"""

from __future__ import annotations

from typing import Final

#: Characters of peer text kept in an audit line or log message.
PEER_TEXT_LIMIT: Final = 64


def shown(value: object, limit: int = PEER_TEXT_LIMIT) -> str:
    """`value` as a quoted, escaped string of at most about `limit` characters."""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}...(+{len(text) - limit} chars)"
