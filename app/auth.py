"""Who is calling: an operator (the admin bearer token, compared in constant time) or a
student (a JWT from the platform's identity provider, core/tokens.py).

Views declare what they accept with `admin_only` or `student_or_admin`, placed right
under `@blp.route` so the caller is checked before the body is parsed: a request
without credentials is a 401 whatever its body holds. The caller of the current
request is `caller()`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import g, request

from app.errors import ApiError
from app.runtime import runtime
from core.tokens import InvalidToken

ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
STUDENT_SECURITY: list[dict[str, list[str]]] = [{"studentToken": []}, {"adminToken": []}]
SECURITY_SCHEMES = {
    "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
    "studentToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The platform's JWT for a student (sub = student id).",
    },
}


@dataclass(frozen=True)
class Caller:
    admin: bool
    student_id: int | None  # None for an operator

    def may_see(self, student_id: int) -> bool:
        return self.admin or self.student_id == student_id

    def require_student(self, student_id: int) -> None:
        """403 unless the caller is this student (or an operator)."""
        if not self.may_see(student_id):
            raise ApiError(403, "forbidden", "This is another student's data.")


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_admin_request() -> bool:
    token = _bearer()
    expected = runtime().settings.admin_token
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())


def _unauthorized(message: str) -> ApiError:
    error = ApiError(401, "unauthorized", message)
    error.headers = {"WWW-Authenticate": 'Bearer realm="tutorflow"'}
    return error


def _identify(*, students: bool) -> Caller:
    if is_admin_request():
        return Caller(admin=True, student_id=None)
    token = _bearer()
    if not students:
        raise _unauthorized("A valid admin bearer token is required.")
    if token is None:
        raise _unauthorized("A bearer token is required.")
    try:
        identity = runtime().tokens.verify(token)
    except InvalidToken as exc:
        raise _unauthorized(f"The bearer token was refused: {exc}.") from exc
    return Caller(admin=False, student_id=identity.student_id)


def caller() -> Caller:
    found: Caller = g.caller
    return found


def _guard(*, students: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.caller = _identify(students=students)
            return view(*args, **kwargs)

        return wrapper

    return decorate


admin_only = _guard(students=False)
student_or_admin = _guard(students=True)
