"""Pages for people, served by the API itself: `/` says where everything is, and /docs
is Swagger UI from the pinned package's own files, showing the app's OpenAPI document."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from app import provider_origin
from app.views.pages import SWAGGER_UI_DIST
from tests.conftest import settings


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "a" and attributes.get("id"):
            self.links[attributes["id"]] = attributes.get("href") or ""


def test_landing_page_links_docs_student_page_flower_and_health(client):
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.mimetype == "text/html"
    parser = _Links()
    parser.feed(answer.get_data(as_text=True))
    settings = client.application.extensions["tutorflow"].settings
    assert parser.links == {
        "docs": "/docs",
        "openapi": "/openapi.json",
        "student": "/students/1",
        "flower": settings.flower_public_url,
        "healthz": "/healthz",
        "readyz": "/readyz",
        "metrics": "/metrics",
    }
    for href in ("/docs", "/openapi.json", "/students/1", "/healthz"):
        assert client.get(href).status_code == 200, href
    assert "issue-token" in answer.get_data(as_text=True)


def test_docs_load_swagger_ui_from_this_server_only(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    assert 'url: "/openapi.json"' in html  # the document the app serves, not another
    # The files are the pinned package's, byte for byte.
    for source in sources:
        served = client.get(source)
        assert served.status_code == 200, source
        name = source.removeprefix("/docs/assets/")
        assert served.get_data() == (SWAGGER_UI_DIST / name).read_bytes()
    assert (SWAGGER_UI_DIST / "VERSION").read_text().strip() == "v5.34.0"
    # Only that folder: nothing else on the disk is reachable through it.
    assert client.get("/docs/assets/../../../app/cli.py").status_code == 404
    assert client.get("/docs/assets/%2e%2e/flask_swagger_ui.py").status_code == 404
    # Nothing may come from elsewhere: the page's security policy says so too. The one
    # other origin is the payment provider's API, and only to connect to (the student
    # page's checkout pays there from the browser, as Stripe.js does).
    policy = page.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert "cdn" not in policy
    assert all("http" not in v for k, v in directives.items() if k != "connect-src")
    assert directives["connect-src"] == f"'self' {provider_origin(settings)}"


def test_favicon_answers_no_content_instead_of_404(client):
    """Every page's browser asks for /favicon.ico; it was a 404 each time."""
    answer = client.get("/favicon.ico")
    assert answer.status_code == 204
    assert answer.get_data() == b""
    assert answer.headers["Cache-Control"] == "public, max-age=86400"
    assert client.head("/favicon.ico").status_code == 204
