"""Test fixtures: real PostgreSQL (schema built by Alembic), real Redis.

Most tests run inside one outer transaction that is rolled back at the end (the
application's sessions join it through savepoints). Tests that need other processes
or threads to see their data (a real worker, races) use `committed`, which truncates.
"""

from __future__ import annotations

import os

from harness.test_stores import per_worker_database, per_worker_redis

# Test settings, before any project module reads the environment. Under `pytest -n N`
# (pytest-xdist; `make test` runs two) each worker process has a database and a Redis
# database of its own, so the workers' tests never see each other's rows or queues.
os.environ["DATABASE_URL"] = per_worker_database(
    os.environ.get(
        "TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow_test"
    )
)
os.environ["CACHE_URL"] = per_worker_redis(
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
)
# TEST_BROKER_URL=amqp://… runs the suite on RabbitMQ (`make test-rabbitmq`); the cache
# stays Redis. Unset, Redis is the broker too.
os.environ["BROKER_URL"] = os.environ.get("TEST_BROKER_URL") or os.environ["CACHE_URL"]
os.environ.pop("REDIS_URL", None)
os.environ["ADMIN_TOKEN"] = "test-admin-token"
os.environ["JWT_SECRET"] = "test-jwt-secret-of-at-least-32-bytes!"
os.environ["STRIPE_SECRET_KEY"] = "sk_test_tutorflow_sandbox"
os.environ["STRIPE_WEBHOOK_SECRETS"] = "whsec_test_old,whsec_test"
os.environ["CELERY_RETRY_BACKOFF"] = "0"  # retry at once (test_faults uses real backoff)
# One top-up thread: a rolled-back test's sessions all share its one connection (the
# tests of the threads ask run_top_up for two).
os.environ["TOP_UP_THREADS"] = "1"
os.environ["LOG_JSON"] = "0"

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from harness.serving import SandboxServer
from sandbox.app import SandboxConfig

# The payment provider: SANDBOX, a real HTTP server in a thread of the test run, for
# the tests and for the workers they start (they inherit STRIPE_API_BASE).
os.environ["STRIPE_API_BASE"] = (
    SANDBOX := SandboxServer(SandboxConfig(webhook_secret="whsec_test"))
).base

from tests import smtp_sink

# The mail server: a real SMTP server (aiosmtpd) in a thread, likewise inherited.
os.environ["SMTP_URL"] = smtp_sink.shared().url

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

import tasks.beat
import tasks.dead_letters
import tasks.notifications
import tasks.pipeline  # noqa: F401  (the task modules: eager runs need them registered)
from app import create_app
from bootstrap import bootstrap
from core.config import get_settings
from harness.brokers import is_rabbitmq, purge_rabbitmq
from harness.clock import travelling_clock
from harness.database import rebuild_database
from models import Base, Database

settings = get_settings()
# The composition root's parts for the test settings: the test app and the eager tasks
# share them (one engine per role, one Redis pool, one Celery app).
services = bootstrap(settings)
celery_app = services.celery
celery_app.set_default()  # this process acts as a worker too (eager runs, signal handlers)


def student_auth(student_id: int) -> dict[str, str]:
    """The Authorization header of this student's platform token."""
    token = services.tokens.issue(student_id)
    return {"Authorization": f"Bearer {token}"}


ADMIN = {"Authorization": "Bearer test-admin-token"}


def open_session() -> Session:
    """A session on the test database (it joins the test's transaction when bound)."""
    return celery_app.database.session()


@contextmanager
def sessions_joining(database: Database, connection: Connection) -> Iterator[None]:
    """Every session `database` makes joins `connection`'s transaction through
    savepoints: the code under test commits (a savepoint released, its after-commit
    channel run) and the test's rollback undoes it all."""
    database.sessions.configure(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield
    finally:
        database.sessions.configure(
            bind=database.engine, join_transaction_mode="conditional_savepoint"
        )


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The test database, rebuilt from scratch by the Alembic migrations."""
    rebuild_database(settings.database_url)
    return celery_app.database.engine


@pytest.fixture(scope="session")
def database() -> Database:
    """The database the test app and the (eager) tasks share: one per settings."""
    return celery_app.database


def flush(client: redis.Redis) -> None:
    """Empty the cache and the broker's queues (on Redis one database holds both)."""
    client.flushdb()
    if is_rabbitmq(settings.broker_url):
        purge_rabbitmq(settings.broker_url)


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(settings.cache_url)
    flush(client)
    return client


@pytest.fixture
def db_connection(engine: Engine, redis_client: redis.Redis) -> Iterator[Connection]:
    flush(redis_client)  # cached read models are keyed by ids that tests reuse
    connection = engine.connect()
    outer = connection.begin()
    try:
        # The API's and the workers' databases (their timeouts differ) join it alike.
        with (
            sessions_joining(celery_app.database, connection),
            sessions_joining(services.api_database, connection),
        ):
            yield connection
    finally:
        outer.rollback()
        connection.close()


@pytest.fixture
def db_session(db_connection: Connection) -> Iterator[Session]:
    session = celery_app.database.session()
    yield session
    session.close()


@pytest.fixture
def committed(engine: Engine, redis_client: redis.Redis) -> Iterator[Engine]:
    """Data that other connections, threads and processes see; wiped afterwards."""
    flush(redis_client)
    try:
        yield engine
    finally:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        flush(redis_client)


def _make_app() -> Flask:
    return create_app(settings, testing=True)


@pytest.fixture
def app(db_connection: Connection) -> Flask:
    return _make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


@pytest.fixture
def live_app(committed: Engine) -> Flask:
    return _make_app()


@pytest.fixture
def live_client(live_app: Flask) -> FlaskClient:
    return live_app.test_client()


@pytest.fixture
def eager() -> Iterator[None]:
    """Run published tasks in-process, at once (logic only: no delivery semantics)."""
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = False
        celery_app.conf.task_eager_propagates = False


@pytest.fixture
def clock() -> Iterator[Callable[[datetime | None], None]]:
    """A controllable clock: `clock(datetime)` stands the application's time there
    (harness/clock.py); the real time again after the test."""
    with travelling_clock() as travelling:
        yield travelling.travel_to
