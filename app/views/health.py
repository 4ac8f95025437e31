"""Liveness, readiness and metrics (outside /api/v1)."""

from __future__ import annotations

import logging

import kombu
import kombu.exceptions
import redis
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from app.metrics import metrics_response
from app.runtime import runtime
from celeryconfig import AMQP_TRANSPORTS, broker_transport
from core.redis_client import redis_client

log = logging.getLogger(__name__)
blp = Blueprint("health", __name__)

_HEAD: list[str] = []
WHERE_WRITES_GO = text(
    "SELECT version_num, coalesce(host(inet_server_addr()) || ':' || inet_server_port(),"
    " 'local socket'), pg_is_in_recovery() FROM alembic_version"
)


def migrations_head() -> str:
    if not _HEAD:
        _HEAD.append(ScriptDirectory.from_config(Config("alembic.ini")).get_current_head() or "")
    return _HEAD[0]


def _broker_client() -> redis.Redis:
    """One client (and connection pool) per app, not a new one per readiness probe."""
    extensions = current_app.extensions
    if "broker_ping" not in extensions:
        settings = runtime().settings
        extensions["broker_ping"] = redis_client(
            settings.broker_url,
            settings.redis_sentinel_master,
            socket_connect_timeout=1,
            socket_timeout=1,
        )
    return extensions["broker_ping"]


def _ping_broker() -> None:
    url = runtime().settings.broker_url
    if broker_transport(url) not in AMQP_TRANSPORTS:
        _broker_client().ping()
        return
    # RabbitMQ: an AMQP handshake (a probe every few seconds: no pool needed).
    with kombu.Connection(url, connect_timeout=1) as connection:
        connection.ensure_connection(max_retries=1)


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz():
    checks: dict[str, str] = {}
    # Which server this process writes to (a replicated cluster: the primary it found).
    server = None
    try:
        with runtime().database.session() as session:
            version, server, standby = session.execute(WHERE_WRITES_GO).one()
        checks["database"] = "read-only (a standby)" if standby else "ok"
        checks["migrations"] = "ok" if version == migrations_head() else f"at {version}"
    except Exception as exc:  # any failure means not ready; the reason is reported
        log.warning("readiness: database", exc_info=True)
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        _ping_broker()
        checks["broker"] = "ok"
    except (redis.RedisError, kombu.exceptions.OperationalError, OSError) as exc:
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    # Not a readiness condition (confirms and reads work without the provider), but
    # what an operator wants to see beside them.
    details = {"payment_provider_breaker": runtime().provider.state, "database_server": server}
    return jsonify(status="ready" if ready else "not_ready", checks=checks, details=details), (
        200 if ready else 503
    )


@blp.get("/metrics")
def metrics():
    return metrics_response()
