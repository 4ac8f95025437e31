"""Every setting Tutorflow reads from the environment, in one place.

Defaults work on a developer machine with PostgreSQL and Redis on localhost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    cache_url: str
    admin_token: str
    webhook_secret: str
    flower_basic_auth: str
    # Pool per process: gunicorn workers and Celery pool children each own one.
    db_pool_size: int
    db_max_overflow: int
    # Off by default: it costs a round trip per checkout. After a database restart the
    # first use of each dead connection fails once (503 / a task retry) and the pool
    # is invalidated, which the fault tests cover.
    db_pool_pre_ping: bool
    # Celery delivery semantics (see README, "Delivery guarantees").
    visibility_timeout: int
    retry_backoff: int
    retry_backoff_max: int
    task_time_limit: int
    retry_jitter: bool
    # Fault tests only: the named step pauses this long inside its transaction, once per
    # payment, so a test can SIGKILL it mid-step. Empty in every real deployment.
    fault_pause_step: str
    fault_pause_seconds: float
    # Rolling session window.
    session_window: int
    top_up_threshold: int
    top_up_interval_seconds: float
    top_up_batch_size: int
    outbox_relay_interval_seconds: float
    # An outbox row younger than this is left to the API's own post-commit publish.
    outbox_relay_grace_seconds: float
    outbox_retention_days: float
    # A confirmed payment whose pipeline has not finished (and is not dead-lettered)
    # after this long is published again: it covers a chain link lost with the broker.
    pipeline_stall_seconds: float
    inbox_retention_days: float
    # Server-Sent Event streams one API process serves at once, and for how long each
    # stays open: streams never hold more than these threads (see app/views/students.py).
    stream_slots_per_process: int
    stream_seconds: float
    # Per client address on the public (non-admin, non-webhook) endpoints.
    rate_limit_public: str
    log_level: str
    log_json: bool

    @classmethod
    def from_env(cls) -> Settings:
        redis_url = _env("REDIS_URL", "redis://127.0.0.1:6379/0")
        return cls(
            database_url=_env(
                "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow"
            ),
            redis_url=redis_url,
            cache_url=_env("CACHE_URL", redis_url),
            admin_token=_env("ADMIN_TOKEN", "dev-admin-token"),
            webhook_secret=_env("WEBHOOK_SECRET", "dev-webhook-secret"),
            flower_basic_auth=_env("FLOWER_BASIC_AUTH", "admin:admin"),
            db_pool_size=_int("DB_POOL_SIZE", 5),
            db_max_overflow=_int("DB_MAX_OVERFLOW", 10),
            db_pool_pre_ping=_env("DB_POOL_PRE_PING", "0") not in ("0", "false", "no"),
            visibility_timeout=_int("CELERY_VISIBILITY_TIMEOUT", 300),
            retry_backoff=_int("CELERY_RETRY_BACKOFF", 2),
            retry_backoff_max=_int("CELERY_RETRY_BACKOFF_MAX", 60),
            task_time_limit=_int("CELERY_TASK_TIME_LIMIT", 120),
            retry_jitter=_env("CELERY_RETRY_JITTER", "1") not in ("0", "false", "no"),
            fault_pause_step=_env("FAULT_PAUSE_STEP", ""),
            fault_pause_seconds=_float("FAULT_PAUSE_SECONDS", 0),
            session_window=_int("SESSION_WINDOW", 7),
            top_up_threshold=_int("TOP_UP_THRESHOLD", 3),
            top_up_interval_seconds=_float("TOP_UP_INTERVAL_SECONDS", 6 * 3600),
            top_up_batch_size=_int("TOP_UP_BATCH_SIZE", 1000),
            outbox_relay_interval_seconds=_float("OUTBOX_RELAY_INTERVAL_SECONDS", 5),
            outbox_relay_grace_seconds=_float("OUTBOX_RELAY_GRACE_SECONDS", 10),
            outbox_retention_days=_float("OUTBOX_RETENTION_DAYS", 7),
            pipeline_stall_seconds=_float("PIPELINE_STALL_SECONDS", 600),
            inbox_retention_days=_float("INBOX_RETENTION_DAYS", 30),
            stream_slots_per_process=_int("STREAM_SLOTS_PER_PROCESS", 2),
            stream_seconds=_float("STREAM_SECONDS", 55),
            rate_limit_public=_env("RATE_LIMIT_PUBLIC", "600/minute"),
            log_level=_env("LOG_LEVEL", "INFO"),
            log_json=_env("LOG_JSON", "1") not in ("0", "false", "no"),
        )


settings = Settings.from_env()
