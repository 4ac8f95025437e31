"""The Flask application factory."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

import click
from flask import Flask, g, request
from flask.cli import ScriptInfo
from flask_cors import CORS
from flask_talisman import Talisman

from app import db, metrics
from app.auth import SECURITY_SCHEMES, is_admin_request
from app.errors import ApiError, TutorflowApi, register_error_handlers
from app.limits import init_limiter
from app.openapi import SchemaRules
from app.runtime import EXTENSION, Runtime
from app.schemas import TimeSlot
from bootstrap import Services, bootstrap
from core import tracing
from core.config import Settings, get_settings
from core.logs import configure_logging, request_id_var

API_PREFIX = "/api/v1"

# Flask's and flask-smorest's own options: constants, not deployment settings.
FLASK_CONFIG: dict[str, Any] = {
    "API_TITLE": "Tutorflow",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "/docs",
    # Swagger UI's files come from the pinned flask-swagger-ui package (app/views/pages.py
    # serves them): /docs works on a network without internet, at a known version.
    "OPENAPI_SWAGGER_UI_URL": "/docs/assets/",
    "MAX_CONTENT_LENGTH": 64 * 1024,
}


def create_app(
    settings: Settings | None = None, *, testing: bool = False, services: Services | None = None
) -> Flask:
    """An app on `settings` (this process's, read from the environment, by default),
    running on the composition root's services for them (bootstrap.py), or on the
    `services` given (the API's own settings, such as rate limits, still from `settings`).

    `testing` leaves logging to the test runner and turns on Flask's TESTING mode.
    """
    settings = settings or get_settings()
    services = services or bootstrap(settings)
    app = Flask(__name__)
    app.config.from_mapping(FLASK_CONFIG, TESTING=testing)
    if not testing:
        configure_logging(_log_level(settings), settings.log_json)
    app.extensions[EXTENSION] = Runtime(
        settings=settings,
        database=services.api_database,
        cache=services.cache,
        telemetry=services.telemetry,
        provider=services.provider,
        tokens=services.tokens,
        celery=services.celery,
    )

    api = TutorflowApi(
        app,
        spec_kwargs={
            "components": {"securitySchemes": SECURITY_SCHEMES},
            "extra_plugins": [SchemaRules()],
        },
    )
    api.register_field(TimeSlot, "string", None)
    app.extensions["tutorflow_api"] = api

    from app.views import (
        admin,
        availability,
        catalogue,
        health,
        pages,
        payments,
        sessions,
        students,
        webhooks,
    )

    limiter = init_limiter(app, settings)
    for public in (payments.blp, students.blp, availability.blp):
        # Operators' tools (flask simulate) carry the admin token and are not limited.
        limiter.limit(settings.rate_limit_public, exempt_when=is_admin_request)(public)
    for blueprint in (
        catalogue.blp,
        availability.blp,
        payments.blp,
        webhooks.blp,
        students.blp,
        sessions.blp,
        admin.blp,
    ):
        api.register_blueprint(blueprint, url_prefix=API_PREFIX)
    app.register_blueprint(health.blp)
    app.register_blueprint(pages.blp)

    _protect(app, settings)
    db.init_app(app)
    metrics.init_app(app)
    register_error_handlers(app)
    _register_request_context(app)

    from app.cli import register_cli

    register_cli(app)
    # Under gunicorn each worker builds its app after the fork: its exporter thread too.
    tracing.install(settings, role="api")
    tracing.instrument_app(app)
    return app


def invoked_by_flask_cli() -> bool:
    """True while a `flask ...` command loads the app: its click context holds Flask's
    ScriptInfo. (gunicorn and the tests build the app outside any click command, and
    `flask run` is a server: its log follows the settings.)"""
    context = click.get_current_context(silent=True)
    if context is None or context.find_object(ScriptInfo) is None:
        return False
    return context.info_name != "run"


def _log_level(settings: Settings) -> str:
    """A CLI command prints its own result: the log adds warnings and errors only, not
    the INFO lines libraries write when they load (Alembic's seven plugin lines, printed
    before every command, `--help` included) or work."""
    if not invoked_by_flask_cli():
        return settings.log_level
    configured = logging.getLevelName(settings.log_level.upper())
    level = configured if isinstance(configured, int) else logging.INFO
    return logging.getLevelName(max(level, logging.WARNING))


def provider_origin(settings: Settings) -> str:
    """Where a browser reaches the payment provider's API: the sandbox in development,
    api.stripe.com in production."""
    parts = urlsplit(settings.stripe_api_base or "https://api.stripe.com")
    return f"{parts.scheme}://{parts.netloc}"


def _protect(app: Flask, settings: Settings) -> None:
    """Security headers on every answer (flask-talisman; TLS ends at the proxy, which
    also sets HSTS) and CORS only for the configured origins (flask-cors)."""
    Talisman(
        app,
        force_https=False,
        strict_transport_security=False,
        session_cookie_secure=False,
        frame_options="DENY",
        referrer_policy="no-referrer",
        content_security_policy={
            "default-src": "'self'",
            # The student page's and the docs page's inline scripts; nothing from elsewhere.
            "script-src": ["'self'", "'unsafe-inline'"],
            "style-src": ["'self'", "'unsafe-inline'"],
            "img-src": ["'self'", "data:"],
            # The student page's checkout confirms the payment with the provider from
            # the browser, as Stripe.js does: its API is the one other origin.
            "connect-src": ["'self'", provider_origin(settings)],
        },
    )
    if settings.cors_origins:
        CORS(
            app,
            resources={r"/api/*": {"origins": list(settings.cors_origins)}},
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )


def _register_request_context(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if 0 < len(incoming) <= 64 else uuid.uuid4().hex
        g.request_id_token = request_id_var.set(g.request_id)

    @app.before_request
    def _require_json_body() -> None:
        if (
            request.method in ("POST", "PUT", "PATCH")
            and request.content_length
            and (not request.is_json)
        ):
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _reset_request_id(_: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)
