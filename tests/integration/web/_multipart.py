"""multipart/related bodies for tests: built by hand (what a client sends), read back with the
standard library's MIME parser (an oracle independent of the archive's code)."""

from __future__ import annotations

import email.parser
import email.policy
import secrets
from collections.abc import Iterable

import httpx


def related_body(parts: Iterable[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related request with `parts`."""
    boundary = secrets.token_hex(12)
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        body += part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="{part_type}"; boundary={boundary}'


def read_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, payload) of each part of a multipart response."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    assert message.is_multipart(), response.headers["content-type"]
    out = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((str(part["content-type"]), payload))
    return out
