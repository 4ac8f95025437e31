"""Error handling: every error leaves the API as
`{"error": {"code": ..., "message": ..., "details": {...}}}` with its status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from flask_limiter.errors import RateLimitExceeded
from flask_smorest import Api
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from app.schemas import ErrorOut
from core.provider import ProviderRejected, ProviderUnavailable
from domain.errors import DomainError

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> tuple[Response, int]:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return jsonify(body), status


class ApiError(Exception):
    """Raised by views for request-level problems (auth, headers, signatures)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers: dict[str, str] = {}


class TutorflowApi(Api):
    """flask-smorest's Api with the design's error body."""

    ERROR_SCHEMA = ErrorOut

    def handle_http_exception(self, error: HTTPException):
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        details = data.get("messages") or {}
        if status == 400 and "json" in details:
            message = "The request body is not valid JSON."
        elif status == 422:
            message = "The request does not validate."
        else:
            message = error.description or error.name
        response, status = error_response(status, HTTP_CODES.get(status, "error"), message, details)
        for name, value in (data.get("headers") or {}).items():
            response.headers[name] = value
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))  # RFC 9110
        if isinstance(error, RateLimitExceeded):
            response.headers["Retry-After"] = str(error.limit.limit.get_expiry())
        return response, status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(error: DomainError):
        return error_response(error.status, error.code, error.message, error.details)

    @app.errorhandler(ApiError)
    def _api(error: ApiError):
        response, status = error_response(error.status, error.code, error.message, error.details)
        response.headers.update(error.headers)
        return response, status

    @app.errorhandler(ProviderUnavailable)
    def _provider_down(error: ProviderUnavailable):
        log.warning("payment provider unavailable: %s", error)
        response, status = error_response(
            503,
            "provider_unavailable",
            "The payment provider cannot be reached; nothing was changed. Try again shortly.",
        )
        response.headers["Retry-After"] = "10"
        return response, status

    @app.errorhandler(ProviderRejected)
    def _provider_refused(error: ProviderRejected):
        return error_response(
            422, "provider_refused", f"The payment provider refused: {error}", {"code": error.code}
        )

    @app.errorhandler(OperationalError)
    def _database_down(error: OperationalError):
        log.error("database unavailable", exc_info=error)
        response, status = error_response(
            503, "unavailable", "The database is unavailable; try again shortly."
        )
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        if isinstance(error, HTTPException):
            return app.extensions["tutorflow_api"].handle_http_exception(error)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
