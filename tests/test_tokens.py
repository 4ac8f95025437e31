"""Student tokens: what is accepted and what is refused, for HS256, RS256 with a public
key and RS256 with a JWKS URL served over real HTTP; and stream tickets."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.tokens import InvalidToken, TokenVerifier
from tests.conftest import settings

HS = dataclasses.replace(settings, jwt_secret="a-test-secret-of-at-least-32-bytes!!")


def token(claims: dict, key: object = HS.jwt_secret, algorithm: str = "HS256", **headers) -> str:
    now = datetime.now(UTC)
    body = {"sub": "7", "aud": HS.jwt_audience, "iss": HS.jwt_issuer, "exp": now + timedelta(1)}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm, headers)


def test_a_valid_token_names_its_student():
    identity = TokenVerifier(HS).verify(token({}))
    assert identity.student_id == 7
    assert identity.expires_at > datetime.now(UTC)


@pytest.mark.parametrize(
    ("claims", "key", "reason"),
    [
        ({"exp": datetime.now(UTC) - timedelta(minutes=5)}, HS.jwt_secret, "expired"),
        ({}, "another-secret-of-at-least-32-bytes!!", "not valid"),
        ({"aud": "someone-else"}, HS.jwt_secret, "audience or issuer"),
        ({"iss": "evil-issuer"}, HS.jwt_secret, "audience or issuer"),
        ({"exp": None}, HS.jwt_secret, "'exp'"),
        ({"sub": "admin"}, HS.jwt_secret, "not a student id"),
        ({"sub": "0"}, HS.jwt_secret, "not a student id"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(claims, key, reason):
    with pytest.raises(InvalidToken, match=reason):
        TokenVerifier(HS).verify(token(claims, key))


def test_the_none_algorithm_and_garbage_are_refused():
    unsigned = jwt.encode({"sub": "7"}, None, algorithm="none")
    for bad in (unsigned, "", "not.a.jwt", "a" * 5000):
        with pytest.raises(InvalidToken):
            TokenVerifier(HS).verify(bad)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rs256_with_a_public_key(rsa_key):
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = TokenVerifier(
        dataclasses.replace(HS, jwt_algorithm="RS256", jwt_public_key=pem.decode())
    )
    assert verifier.verify(token({}, rsa_key, "RS256")).student_id == 7
    with pytest.raises(InvalidToken):  # an HS256 token "signed" with the public key
        verifier.verify(token({}, HS.jwt_secret))


@pytest.fixture
def jwks_url(rsa_key) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()


def test_rs256_with_a_jwks_url(rsa_key, jwks_url):
    verifier = TokenVerifier(dataclasses.replace(HS, jwt_algorithm="RS256", jwt_jwks_url=jwks_url))
    assert verifier.verify(token({}, rsa_key, "RS256", kid="k1")).student_id == 7
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidToken):
        verifier.verify(token({}, other, "RS256", kid="k1"))


def test_a_stream_ticket_is_short_lived_and_only_a_ticket():
    verifier = TokenVerifier(HS)
    ticket, expires = verifier.stream_ticket(7)
    assert verifier.verify_stream_ticket(ticket).student_id == 7
    assert expires - datetime.now(UTC) <= timedelta(seconds=HS.stream_ticket_seconds)
    with pytest.raises(InvalidToken):  # a ticket is not a platform token...
        verifier.verify(ticket)
    with pytest.raises(InvalidToken):  # ...nor a platform token a ticket
        verifier.verify_stream_ticket(token({}))
