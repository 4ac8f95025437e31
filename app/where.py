"""What `make up` prints before the stack starts (`flask --app wsgi urls`): where each
part is and the development credentials it uses, all from the Settings object."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from core.config import Settings, http_url
from core.tokens import TokenVerifier

DEMO_STUDENT = 1  # the first student `flask seed-demo` creates


def _without_login(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def stack_summary(settings: Settings) -> str:
    """URLs and credentials. A secret is printed only while it is the built-in
    development default; one set in the environment is named, never echoed."""
    defaults = Settings.from_env({})
    api = http_url(settings.api_bind)

    def shown(value: str, default: str, variable: str) -> str:
        return value if value == default else f"(from {variable})"

    admin = shown(settings.admin_token, defaults.admin_token, "ADMIN_TOKEN")
    flower_login = shown(
        settings.flower_basic_auth, defaults.flower_basic_auth, "FLOWER_BASIC_AUTH"
    )
    issue = f".venv/bin/flask --app wsgi issue-token --student {DEMO_STUDENT}"
    student_page = f"{api}/students/{DEMO_STUDENT}"
    token_lines = [f"  student token    {issue}"]
    if (settings.jwt_algorithm, settings.jwt_secret) == (
        defaults.jwt_algorithm,
        defaults.jwt_secret,
    ):
        token = TokenVerifier(settings).issue(DEMO_STUDENT, ttl=timedelta(hours=12))
        student_page = f"{student_page}#token={token}"
        token_lines.append("                   (the student page link above carries one, 12 h)")
    provider = (
        settings.stripe_api_base
        or "https://api.stripe.com (no sandbox: STRIPE_SECRET_KEY is not the sandbox's)"
    )
    return "\n".join(
        [
            "Tutorflow",
            f"  API              {api}/",
            f"  API docs         {api}/docs   (OpenAPI: {api}/openapi.json)",
            f"  student page     {student_page}",
            f"  Flower           {settings.flower_public_url}   (login {flower_login})",
            f"  provider sandbox {provider}",
            f"  health           {api}/healthz   {api}/readyz   {api}/metrics",
            f"  mail (SMTP)      {_without_login(settings.smtp_url)}"
            "   (under make up a sink that prints every mail on its 'mailsink' lines)",
            "Credentials (development defaults are shown; real ones are only named)",
            f"  admin token      {admin}   (Authorization: Bearer …, /api/v1/admin/…)",
            f"  Flower login     {flower_login}",
            *token_lines,
            f"Logs: {'JSON lines' if settings.log_json else 'text'} at {settings.log_level}"
            " (LOG_JSON, LOG_LEVEL). Dead letters: .venv/bin/flask --app wsgi dead-letters list",
        ]
    )
