"""Rate limits on the public endpoints (flask-limiter, counted in Redis so that every
API process shares them). Admin endpoints need the token; the webhook is signed."""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from core.config import Settings


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    # Behind a reverse proxy, wrap the app in werkzeug's ProxyFix so the client's
    # address (not the proxy's) is the key.
    return Limiter(
        get_remote_address,
        app=app,
        storage_uri=settings.cache_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        strategy="fixed-window",
        # No X-RateLimit-* headers on every answer: each costs a Redis round trip.
        # A 429 still says Retry-After (app.errors).
        headers_enabled=False,
        # If Redis is down, serve rather than refuse: the limit is protection, not a gate.
        swallow_errors=True,
    )
