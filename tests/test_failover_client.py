"""What a client of a replicated PostgreSQL sees when the primary moves, on the real
test database (the failover itself: tests/test_pg_failover.py, in the hosts suite).

- A write refused as read-only (a server a failover demoted, reached by a pooled
  connection) is a lost connection: OperationalError, the connection invalidated; the
  API answers 503 JSON with Retry-After, never 500.
- "The database could not be reached" (nothing listening, a lost connection) is told
  apart from a statement that failed on a working connection: only the first lets a
  step retry past its max_retries (tasks.base.PipelineTask.riding_out_an_outage).
"""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

from app import create_app
from models import Database, database_unreachable, lock_not_available
from tests.conftest import ADMIN, settings


def read_only(database: Database) -> None:
    """Every new connection of `database` lands on a server that refuses writes, as a
    standby does (default_transaction_read_only)."""

    @event.listens_for(database.engine, "connect")
    def _standby(dbapi_connection, _record) -> None:
        dbapi_connection.set_session(readonly=True)


def test_a_read_only_refusal_is_a_lost_connection(committed):
    database = Database(dataclasses.replace(settings, db_pool_size=1), role="worker")
    read_only(database)
    try:
        with pytest.raises(OperationalError) as refused, database.transaction() as session:
            session.execute(text("CREATE TEMP TABLE probe (n int)"))
        assert refused.value.connection_invalidated
        assert "read-only transaction" in str(refused.value.orig)
        assert database_unreachable(refused.value)
    finally:
        database.engine.dispose()


def test_the_api_answers_503_with_retry_after_when_its_server_was_demoted(committed):
    # Its own settings, so its own engine (bootstrap builds one per Settings).
    app = create_app(dataclasses.replace(settings, db_pool_size=2), testing=True)
    with app.app_context():
        from app.runtime import runtime

        read_only(runtime().database)
    body = {"name": "Ana", "email": "ana@example.com", "timezone": "Europe/Berlin"}
    response = app.test_client().post("/api/v1/students", json=body, headers=ADMIN)
    assert response.status_code == 503, response.json
    assert response.headers["Retry-After"].isdigit()
    assert response.json["error"]["code"] == "unavailable"


@pytest.mark.usefixtures("engine")  # the test database, built
def test_unreachable_is_told_apart_from_a_failed_statement():
    nobody = create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:1/x", connect_args={"connect_timeout": 2}
    )
    with pytest.raises(OperationalError) as refused:
        nobody.connect()
    assert database_unreachable(refused.value)

    working = create_engine(settings.database_url)
    try:
        with pytest.raises(OperationalError) as timed_out, working.connect() as connection:
            connection.execute(text("SET statement_timeout = 10"))
            connection.execute(text("SELECT pg_sleep(1)"))
        assert not database_unreachable(timed_out.value)  # QueryCanceled: a retry as usual
    finally:
        working.dispose()


@pytest.mark.usefixtures("engine")  # the test database, built
def test_a_lock_not_granted_in_time_is_told_apart_too():
    """A row lock not granted within lock_timeout: not an unreachable database, but it
    rides past max_retries as one does (its holder may be a worker cut off
    mid-transaction)."""
    working = create_engine(settings.database_url)
    try:
        with working.connect() as holder, working.connect() as waiter:
            holder.execute(text("SELECT pg_advisory_xact_lock(4242)"))
            waiter.execute(text("SET lock_timeout = 50"))
            with pytest.raises(OperationalError) as refused:
                waiter.execute(text("SELECT pg_advisory_xact_lock(4242)"))
            holder.rollback()
        assert lock_not_available(refused.value)
        assert not database_unreachable(refused.value)
    finally:
        working.dispose()
