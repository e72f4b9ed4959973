"""DICOMweb with bearer JWTs from an OAuth2 issuer, checked by the gate against the issuer's
JWKS served over HTTPS on loopback (tests/issuer.py): the composition root gives the gate the
JWKS verifier when [jwt] names one, and the token's scopes ([jwt.scopes]) are the
permissions."""

from __future__ import annotations

from pathlib import Path

from tests.issuer import (
    AUDIENCE,
    ISSUER,
    IssuerCA,
    JwksEndpoint,
    ec_key,
    jwk,
    rsa_key,
    serve_jwks,
    token,
    unsigned,
)

from .conftest import start_web


def test_issuer_tokens_over_dicomweb(tmp_path: Path) -> None:
    rsa, ec, stranger = rsa_key(), ec_key(), rsa_key()
    endpoint = JwksEndpoint([jwk(rsa, "rsa-1"), jwk(ec, "ec-1")])
    ca = IssuerCA(tmp_path / "issuer")
    with serve_jwks(ca, endpoint):
        web = start_web(
            tmp_path,
            **{
                "jwt.issuer": ISSUER,
                "jwt.audience": AUDIENCE,
                "jwt.jwks_url": endpoint.url,
                "jwt.jwks_ca_file": str(ca.ca_file),
                "jwt.scopes": {"pacs.read": ["find", "get"]},
            },
        )
        try:
            with web.client(None) as client:

                def status(bearer: str) -> int:
                    headers = {"Authorization": f"Bearer {bearer}"}
                    return client.get("/studies", headers=headers).status_code

                assert status(token(rsa, "rsa-1", sub="reader")) == 200
                assert status(token(ec, "ec-1", sub="reader")) == 200
                # with a JWKS the token's scopes decide, through [jwt.scopes] (the gate's rule)
                assert status(token(ec, "ec-1", sub="reader", scope="pacs.write")) == 403
                assert status(token(rsa, "rsa-1", sub="someone", scope="pacs.read")) == 200
                assert status(token(rsa, "rsa-1", sub="reader", aud="other")) == 401
                assert status(token(stranger, "rsa-1", sub="reader")) == 401  # bad signature
                assert status(token(rsa, "unknown-kid", sub="reader")) == 401
                assert status(unsigned(sub="reader")) == 401
            assert endpoint.requests >= 1
        finally:
            web.archive.stop()
