"""Admin bearer token, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import request

from app.errors import ApiError
from app.runtime import runtime

ADMIN_SECURITY = [{"bearerAuth": []}]


def is_admin_request() -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = runtime().settings.admin_token
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode()
    )


def require_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_admin_request():
            raise ApiError(401, "unauthorized", "A valid admin bearer token is required.")
        return view(*args, **kwargs)

    return wrapper
