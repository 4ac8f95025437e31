"""Student bearer tokens (JWT, PyJWT) and short-lived stream tickets.

Students' tokens are issued by the platform's identity provider. The API verifies them:
HS256 with a shared secret (JWT_SECRET), or RS256 with the provider's public key
(JWT_PUBLIC_KEY) or its JWKS URL (JWT_JWKS_URL). `exp`, `sub`, `aud` and `iss` are
required; audience and issuer must match. `sub` is the student id.

EventSource (SSE) cannot send headers, so a student exchanges their token for a stream
ticket: a JWT of ours, valid for a minute, for one student and for streaming only, that
may ride in the query string without exposing the long-lived token in URLs and logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from core.config import Settings

STREAM_AUDIENCE = "tutorflow-stream"


class InvalidToken(Exception):
    """The token is missing, malformed, expired, forged or for someone else (→ 401)."""


@dataclass(frozen=True)
class StudentIdentity:
    student_id: int
    expires_at: datetime


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithm = settings.jwt_algorithm
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None

    def _verification_key(self, token: str) -> Any:
        if self.algorithm == "HS256":
            return self.settings.jwt_secret
        if self._jwks is not None:
            return self._jwks.get_signing_key_from_jwt(token).key
        return self.settings.jwt_public_key

    def verify(self, token: str) -> StudentIdentity:
        """The student a platform token names; raises InvalidToken."""
        try:
            claims = jwt.decode(
                token,
                self._verification_key(token),
                algorithms=[self.algorithm],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["exp", "sub", "aud", "iss"]},
                leeway=10,
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidToken(_reason(exc)) from exc
        return _identity(claims)

    def issue(self, student_id: int, *, ttl: timedelta = timedelta(hours=12)) -> str:
        """A platform token, for development and tests only (HS256 with JWT_SECRET): in
        production the identity provider issues them."""
        if self.algorithm != "HS256":
            raise RuntimeError("tokens are issued here only with HS256 (development)")
        now = datetime.now(UTC)
        return jwt.encode(
            {
                "sub": str(student_id),
                "aud": self.settings.jwt_audience,
                "iss": self.settings.jwt_issuer,
                "iat": now,
                "exp": now + ttl,
            },
            self.settings.jwt_secret,
            algorithm="HS256",
        )

    def stream_ticket(self, student_id: int) -> tuple[str, datetime]:
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=self.settings.stream_ticket_seconds)
        ticket = jwt.encode(
            {"sub": str(student_id), "aud": STREAM_AUDIENCE, "iat": now, "exp": expires},
            self.settings.stream_ticket_secret,
            algorithm="HS256",
        )
        return ticket, expires

    def verify_stream_ticket(self, ticket: str) -> StudentIdentity:
        try:
            claims = jwt.decode(
                ticket,
                self.settings.stream_ticket_secret,
                algorithms=["HS256"],
                audience=STREAM_AUDIENCE,
                options={"require": ["exp", "sub", "aud"]},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidToken(_reason(exc)) from exc
        return _identity(claims)


def _identity(claims: dict[str, Any]) -> StudentIdentity:
    subject = str(claims["sub"])
    if not subject.isascii() or not subject.isdigit() or not 0 < int(subject) < 2**63:
        raise InvalidToken("the token's subject is not a student id")
    return StudentIdentity(int(subject), datetime.fromtimestamp(int(claims["exp"]), UTC))


def _reason(error: Exception) -> str:
    if isinstance(error, jwt.ExpiredSignatureError):
        return "the token has expired"
    if isinstance(error, jwt.InvalidAudienceError | jwt.InvalidIssuerError):
        return "the token is for another audience or issuer"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token lacks the {error.claim!r} claim"
    return "the token is not valid"
