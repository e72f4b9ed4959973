"""The HTTP prober at the server root `/`, where pacsguard serves DICOMweb: recognised by its
Bearer realm when closed, counted when open, and not confused with other REST APIs that answer
`/studies` with plain JSON (Orthanc's own REST API does). Raw servers on loopback."""

from __future__ import annotations

import asyncio
import json

from pacsguard.scan.checks import assess
from pacsguard.scan.http_model import QidoEndpoint
from pacsguard.scan.model import Observations

from .test_http_hostile import _each_request, _response, probe


def _serve(answer_for: dict[str, tuple[str, dict[str, str], bytes]]) -> Observations:
    """Answer each path prefix as given, 404 otherwise; probe the server."""

    def answer(path: str) -> bytes:
        for prefix, (status, headers, body) in answer_for.items():
            if path.startswith(prefix):
                return _response(status, headers, body)
        return _response("404 Not Found", {})

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _each_request(reader, writer, answer)

    return probe(handler)[0]


def _root(obs: Observations) -> QidoEndpoint:
    assert obs.http is not None
    return next(q for q in obs.http.dicomweb if q.path == "/")


def test_bearer_realm_pacsguard_is_recognised_as_closed_dicomweb() -> None:
    challenge = {"WWW-Authenticate": 'Bearer realm="pacsguard"'}
    obs = _serve({"/": ("401 Unauthorized", challenge, b"401: authentication required\n")})
    root = _root(obs)
    assert (root.status, root.open, root.auth_required) == (401, False, True)
    assert root.product == "pacsguard archive DICOMweb"
    assert obs.http is not None
    assert not any(q.auth_required for q in obs.http.dicomweb if q.path != "/")
    assert [f.id for f in assess(obs).findings] == ["PG-HTTP-NO-TLS", "PG-HTTP-DICOMWEB-AUTH"]


def test_another_realm_is_a_login_wall_not_a_dicomweb() -> None:
    challenge = {"WWW-Authenticate": 'Bearer realm="elsewhere"'}
    obs = _serve({"/": ("401 Unauthorized", challenge, b"")})
    root = _root(obs)
    assert (root.status, root.auth_required, root.product) == (401, False, None)
    assert assess(obs).findings == ()


def test_plain_json_at_studies_is_not_counted_as_qido() -> None:
    ids = json.dumps(["6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715"]).encode()
    obs = _serve({"/studies": ("200 OK", {"Content-Type": "application/json"}, ids)})
    root = _root(obs)
    assert (root.status, root.open, root.studies, root.product) == (200, False, 0, None)
    assert "PG-HTTP-QIDO-ANON" not in {f.id for f in assess(obs).findings}


def test_dicom_json_at_studies_is_counted_as_open_qido() -> None:
    page = json.dumps(
        [{"0020000D": {"vr": "UI", "Value": [f"1.2.826.0.1.3680043.10.1.{n}"]}} for n in range(3)]
    ).encode()
    obs = _serve({"/studies": ("200 OK", {"Content-Type": "application/dicom+json"}, page)})
    root = _root(obs)
    assert (root.open, root.studies, root.lower_bound, root.auth_required) == (
        True,
        3,
        False,
        False,
    )
    assert root.product == "pacsguard archive DICOMweb"
    found = {f.id: f for f in assess(obs).findings}
    assert found["PG-HTTP-QIDO-ANON"].evidence["studies"] == 3
    assert "PG-HTTP-DICOMWEB-AUTH" not in found
