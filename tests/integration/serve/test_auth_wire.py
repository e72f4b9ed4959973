"""Authentication over the wire with pynetdicom as the client: JWT, lockout, association cap."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification

from pacsguard.archive.app import RunningArchive

from .conftest import TESTER, StartArchive, make_data_dir

SECRET = b"0123456789abcdef0123456789abcdef"


def jwt_config(tmp: Path) -> str:
    (tmp / "jwt.secret").write_bytes(SECRET)
    return f"""
[jwt]
issuer = "https://idp.test"
audience = "pacsguard"
algorithm = "HS256"
secret_file = "{tmp / "jwt.secret"}"

[[ae]]
ae_title = "APP"
auth = "jwt"
username = "svc-app"
permissions = ["echo"]
"""


def token(subject: str, *, expires_in: int = 300) -> bytes:
    now = int(time.time())
    claims = {
        "sub": subject,
        "iss": "https://idp.test",
        "aud": "pacsguard",
        "iat": now,
        "exp": now + expires_in,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


def echo(archive: RunningArchive, calling: str, identity: UserIdentityNegotiation | None) -> bool:
    endpoint = next(e for e in archive.endpoints if not e.tls)
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate(
        endpoint.host,
        endpoint.port,
        ae_title="PACSGUARD",
        ext_neg=[identity] if identity is not None else None,
    )
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def jwt_identity(raw: bytes) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 5
    item.primary_field = raw
    return item


def test_jwt_user_identity(start: StartArchive, tmp_path: Path) -> None:
    archive = start(make_data_dir(tmp_path / "d", TESTER + jwt_config(tmp_path)))
    assert echo(archive, "APP", jwt_identity(token("svc-app")))
    assert not echo(archive, "APP", None)
    assert not echo(archive, "APP", jwt_identity(token("someone-else")))
    assert not echo(archive, "APP", jwt_identity(token("svc-app", expires_in=-120)))


def test_repeated_failures_lock_the_source_out(start: StartArchive, tmp_path: Path) -> None:
    archive = start(make_data_dir(tmp_path / "d", TESTER + jwt_config(tmp_path)))
    limit = archive.settings.security.lockout.max_failures
    for _ in range(limit):
        assert not echo(archive, "APP", jwt_identity(token("wrong")))
    # Now even correct credentials from this address are refused, until the lockout ends.
    assert not echo(archive, "APP", jwt_identity(token("svc-app")))
    assert not echo(archive, "TESTER", None)
    assert archive.gate.locked_out("127.0.0.1")


def test_association_limit(start: StartArchive) -> None:
    archive = start(**{"server.max_associations": 2, "server.max_associations_per_ae": 2})
    endpoint = next(e for e in archive.endpoints if not e.tls)
    held = []
    try:
        for _ in range(2):
            ae = AE(ae_title="TESTER")
            ae.add_requested_context(Verification)
            assoc = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
            assert assoc.is_established
            held.append(assoc)
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(Verification)
        third = ae.associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
        assert third.is_rejected
    finally:
        for assoc in held:
            assoc.release()
