"""Rate limits on the public endpoints (flask-limiter, counted in Redis so that every
API process shares them). Admin endpoints need the token; the webhook is signed."""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from core.config import Settings
from core.redis_client import redis_client


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    # Behind a reverse proxy, wrap the app in werkzeug's ProxyFix so the client's
    # address (not the proxy's) is the key.
    return Limiter(
        get_remote_address,
        app=app,
        # The counters' client is built like every other (a server or a Sentinel-managed
        # primary that follows a failover); limits uses its connection pool.
        storage_uri="redis://",
        # Flask-Limiter types the options as str | int; limits' RedisStorage takes a pool.
        storage_options={
            "connection_pool": redis_client(  # type: ignore[dict-item]
                settings.cache_url,
                settings.redis_sentinel_master,
                socket_connect_timeout=1,
                socket_timeout=1,
            ).connection_pool
        },
        strategy="fixed-window",
        # No X-RateLimit-* headers on every answer: each costs a Redis round trip.
        # A 429 still says Retry-After (app.errors).
        headers_enabled=False,
        # If Redis is down, serve rather than refuse: the limit is protection, not a gate.
        swallow_errors=True,
    )
