"""Pages for people: the landing page, the student page, the operator's payment page
(plain HTML and JavaScript, no build step) and the files of the Swagger UI at /docs."""

from __future__ import annotations

import uuid
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, make_response, render_template, send_from_directory

from app.runtime import runtime

blp = Blueprint("pages", __name__)
# Swagger UI's dist files as the pinned flask-swagger-ui wheel ships them: no CDN, so the
# docs work offline, and the version moves only with pyproject.toml.
SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"


@blp.get("/")
def landing():
    """Where everything is: docs, the student page, Flower, health."""
    return render_template("landing.html", flower_url=runtime().settings.flower_public_url)


@blp.get("/favicon.ico")
def favicon():
    """Browsers ask for it with every page: an empty answer (no icon, and no 404 in the
    console or the logs), cached for a day so they stop asking."""
    response = make_response("", 204)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@blp.get("/docs/assets/<path:filename>")
def swagger_ui_asset(filename: str):
    return send_from_directory(SWAGGER_UI_DIST, filename, max_age=24 * 3600)


@blp.get("/students/<int(max=9223372036854775807):student_id>")
def student_page(student_id: int):
    """The student's sessions, and the checkout (it pays at the provider from the
    browser, as Stripe.js would: the provider's base URL and publishable key)."""
    settings = runtime().settings
    response = make_response(
        render_template(
            "student.html",
            provider_base=(settings.stripe_api_base or "https://api.stripe.com").rstrip("/"),
            publishable_key=settings.stripe_publishable_key,
        )
    )
    response.headers["Cache-Control"] = "no-cache"
    return response


@blp.get("/admin/payments/<uuid:payment_id>")
def payment_page(payment_id: uuid.UUID):
    """The operator's page of one payment: HTML and a script, no data and no secret. The
    script asks for the admin token once (kept in the tab's sessionStorage) and reads
    GET /api/v1/admin/payments/{id} with it as a bearer header: no cookie, so no CSRF,
    and the token is never in a URL, a log line or the page."""
    response = make_response(render_template("payment.html"))
    response.headers["Cache-Control"] = "no-cache"
    return response
