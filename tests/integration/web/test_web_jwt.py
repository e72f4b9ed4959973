"""Bearer JWTs over DICOMweb, verified by the gate (`Gate.verify_token`: HS256 here, with the
issuer, audience and expiry of [jwt]); the token's sub is a user whose roles apply."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import jwt

from pacsguard.archive.app import start_archive
from pacsguard.archive.config import load_settings
from tests.integration.serve.conftest import make_data_dir

from .conftest import USERS, free_ports, web_endpoint

SECRET = b"0123456789abcdef0123456789abcdef-test-only"


def test_jwt_bearer_tokens(tmp_path: Path) -> None:
    (tmp_path / "jwt.secret").write_bytes(SECRET)
    config = f"""
[jwt]
issuer = "https://idp.test"
audience = "pacsguard"
algorithm = "HS256"
secret_file = "{tmp_path / "jwt.secret"}"

[[ae]]
ae_title = "JWTPEER"
auth = "jwt"
username = "reader"
permissions = ["find"]
"""
    data = make_data_dir(tmp_path / "data", USERS + config)
    ports = free_ports(3)
    settings = load_settings(
        data / "pacsguard.toml",
        env={},
        overrides={
            "server.dimse_port": ports[0],
            "server.plaintext_port": ports[1],
            "dicomweb.enabled": True,
            "dicomweb.port": ports[2],
        },
    )
    archive = start_archive(settings)
    try:
        host, port = web_endpoint(archive)
        now = int(time.time())

        def token(key: bytes = SECRET, **changes: object) -> str:
            claims: dict[str, object] = {
                "sub": "reader",
                "iss": "https://idp.test",
                "aud": "pacsguard",
                "iat": now,
                "exp": now + 300,
                **changes,
            }
            return jwt.encode(claims, key, algorithm="HS256")

        with httpx.Client(
            base_url=f"https://{host}:{port}",
            verify=ssl.create_default_context(cafile=str(data / "tls" / "ca.crt")),
        ) as client:

            def status(bearer: str) -> int:
                return client.get(
                    "/studies", headers={"Authorization": f"Bearer {bearer}"}
                ).status_code

            assert status(token()) == 200
            assert status(token(sub="uploader")) == 403  # modality: no find
            assert status(token(sub="nobody")) == 401
            assert status(token(exp=now - 3600)) == 401
            assert status(token(aud="someone-else")) == 401
            assert status(token(iss="https://other.test")) == 401
            assert status(token(key=b"another secret, another issuer......")) == 401
            unsigned = jwt.encode(
                {"sub": "reader", "iss": "https://idp.test", "aud": "pacsguard", "exp": now + 300},
                None,
                algorithm="none",
            )  # type: ignore[arg-type]
            assert status(unsigned) == 401
    finally:
        archive.stop()
