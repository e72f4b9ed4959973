"""The DICOMweb part of `pacsguard demo`: a token-authenticated QIDO-RS / WADO-RS round trip.

Against the demo archive's HTTPS listener, as a new user would do it by hand:

1. `pacsguard token issue --user admin --data-dir DEMO` (the real command, in a child process;
   it prints the token once and keeps only its SHA-256);
2. `GET /studies` without a token: 401 with a Bearer challenge;
3. `GET /studies` with the token (QIDO-RS): the stored studies, counted;
4. `GET /studies/{study}/instances` (QIDO-RS) for the first study, then WADO-RS of its first
   instance as `multipart/related; type="application/dicom"`, compared byte for byte with the
   Part 10 encoding of the data set the administrator stored over DIMSE.

httpx is the client, verifying the archive's certificate against the demo's own CA; the
multipart answer is read with the standard library's MIME parser, not with the archive's code.
Only counts, statuses and sizes leave this module: no UID and no patient value is printed.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

#: What `pacsguard token issue` prints the token as (archive.tokens: pgt_<id>_<secret>).
_TOKEN: Final = re.compile(r"\b(pgt_([0-9a-f]{12})_[A-Za-z0-9_-]{43})\b")
_STUDY_UID: Final = "0020000D"
_SERIES_UID: Final = "0020000E"
_SOP_INSTANCE_UID: Final = "00080018"
DICOM_JSON: Final = "application/dicom+json"
WADO_ACCEPT: Final = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True, slots=True)
class WebDemo:
    """What the round trip showed; `ok` when every step answered as a secure archive must."""

    url: str
    #: The token command as a user types it (the token itself is not kept here).
    command: str
    token_id: str | None = None
    anonymous_status: int | None = None
    anonymous_challenge: str | None = None
    studies: int | None = None
    instances_in_study: int | None = None
    wado_status: int | None = None
    wado_bytes: int = 0
    identical: bool = False
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.anonymous_status == 401
            and bool(self.studies)
            and self.identical
        )


def token_command(folder: Path, username: str) -> list[str]:
    """`pacsguard token issue --user USERNAME --data-dir FOLDER`, run by the installed script
    next to this Python (else through this Python)."""
    script = shutil.which("pacsguard", path=str(Path(sys.executable).parent))
    head = (
        [script]
        if script is not None
        else [sys.executable, "-c", "import sys; from pacsguard.cli import main; sys.exit(main())"]
    )
    return [*head, "token", "issue", "--user", username, "--data-dir", str(folder)]


def issue_token(folder: Path, username: str) -> tuple[str, str]:
    """(token, token id) from the real `pacsguard token issue`; RuntimeError saying why not."""
    done = subprocess.run(  # our own CLI, no shell
        token_command(folder, username), capture_output=True, text=True, timeout=120, check=False
    )
    found = _TOKEN.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(
            f"`pacsguard token issue` exited {done.returncode}: {done.stderr.strip()[-300:]}"
        )
    return found.group(1), found.group(2)


def _first(entry: Mapping[str, Any], tag: str) -> str | None:
    element = entry.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None


def dicom_parts(response: httpx.Response) -> list[bytes]:
    """The payloads of a multipart/related answer, read with the standard library."""
    head = f"Content-Type: {response.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    if not message.is_multipart():
        return []
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload)
    return parts


def run_web_demo(
    url: str,
    ca_file: Path,
    folder: Path,
    username: str,
    stored: Mapping[str, bytes],
) -> WebDemo:
    """The round trip against `url`; `stored` maps SOP Instance UIDs to the Part 10 bytes of
    what was stored. Never raises for what the archive answers: problems are listed."""
    shown = f"pacsguard token issue --user {username} --data-dir {folder}"
    problems: list[str] = []
    try:
        token, token_id = issue_token(folder, username)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return WebDemo(url, shown, problems=(str(exc),))
    facts: dict[str, Any] = {"token_id": token_id}
    verify = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(base_url=url, verify=verify, timeout=30.0, trust_env=False) as client:
        try:
            _round_trip(client, token, stored, facts, problems)
        except httpx.HTTPError as exc:
            problems.append(f"HTTPS request failed: {exc.__class__.__name__}: {exc}")
    return WebDemo(url, shown, problems=tuple(problems), **facts)


def _round_trip(
    client: httpx.Client,
    token: str,
    stored: Mapping[str, bytes],
    facts: dict[str, Any],
    problems: list[str],
) -> None:
    anonymous = client.get("/studies", headers={"Accept": DICOM_JSON})
    facts["anonymous_status"] = anonymous.status_code
    facts["anonymous_challenge"] = anonymous.headers.get("www-authenticate")
    if anonymous.status_code != 401:
        problems.append(f"GET /studies without a token answered {anonymous.status_code}")
    auth = {"Authorization": f"Bearer {token}", "Accept": DICOM_JSON}
    studies = client.get("/studies", headers=auth)
    if studies.status_code != 200:
        problems.append(f"QIDO-RS GET /studies with the token answered {studies.status_code}")
        return
    found = studies.json()
    facts["studies"] = len(found)
    study = _first(found[0], _STUDY_UID) if found else None
    if study is None:
        problems.append("QIDO-RS found no study")
        return
    listed = client.get(f"/studies/{study}/instances", headers=auth)
    if listed.status_code != 200:
        problems.append(f"QIDO-RS of a study's instances answered {listed.status_code}")
        return
    instances = listed.json()
    facts["instances_in_study"] = len(instances)
    entry = next((e for e in instances if _first(e, _SOP_INSTANCE_UID) in stored), None)
    series = _first(entry, _SERIES_UID) if entry is not None else None
    if entry is None or series is None:
        problems.append("QIDO-RS listed no instance the demo stored")
        return
    sop = _first(entry, _SOP_INSTANCE_UID)
    assert sop is not None
    wado = client.get(
        f"/studies/{study}/series/{series}/instances/{sop}",
        headers={"Authorization": f"Bearer {token}", "Accept": WADO_ACCEPT},
    )
    facts["wado_status"] = wado.status_code
    if wado.status_code != 200:
        problems.append(f"WADO-RS of one instance answered {wado.status_code}")
        return
    parts = dicom_parts(wado)
    facts["wado_bytes"] = sum(len(p) for p in parts)
    facts["identical"] = len(parts) == 1 and parts[0] == stored[sop]
    if not facts["identical"]:
        problems.append(
            f"WADO-RS answered {len(parts)} part(s) of {facts['wado_bytes']} bytes, not the "
            f"{len(stored[sop])} bytes stored"
        )
