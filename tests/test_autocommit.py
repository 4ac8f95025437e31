"""Statements outside a transaction, on a pooled connection given back as it was found:
`execute_autocommit` (the outbox's stamp, the e-mails' claim and marks), one statement
that commits on its own in one round trip, and `Database.reading()` (the verify step's
read before it asks the provider), reads with no BEGIN nor ROLLBACK. Real PostgreSQL;
the server's own view of each backend (pg_stat_activity) tells what it was last sent."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from models import Database, execute_autocommit
from tests.conftest import settings


@pytest.fixture
def probe(engine: Engine) -> Iterator[str]:
    """A table of its own (what commits here cannot be rolled back), dropped after."""
    name = f"autocommit_probe_{uuid.uuid4().hex[:12]}"
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {name} (n int)"))
    yield name
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {name}"))


@pytest.fixture
def one_connection() -> Iterator[Engine]:
    """A pool of one connection: every use below is the same backend."""
    pooled = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    yield pooled
    pooled.dispose()


def last_sent(engine: Engine, pid: int) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                text("SELECT query FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar_one()
        )


def test_a_statement_commits_alone_and_its_connection_needs_no_reset(
    engine: Engine, one_connection: Engine, probe: str
) -> None:
    with one_connection.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    insert = text(f"INSERT INTO {probe} (n) VALUES (:n)")

    execute_autocommit(one_connection, insert, {"n": 1})
    with one_connection.begin() as connection:  # a transaction between two switches
        connection.execute(insert, {"n": 2})
    execute_autocommit(one_connection, insert, {"n": 3})

    # The statement was the last thing the server heard: no `SET
    # default_transaction_isolation TO DEFAULT` after it when the connection went back.
    assert last_sent(engine, pid) == f"INSERT INTO {probe} (n) VALUES (3)"
    with engine.connect() as other:  # committed, seen from another connection
        assert other.execute(text(f"SELECT count(*) FROM {probe}")).scalar_one() == 3
    # Given back out of autocommit: a transaction on it still rolls back.
    with pytest.raises(RuntimeError), one_connection.begin() as connection:
        connection.execute(insert, {"n": 4})
        raise RuntimeError("roll back")
    with engine.connect() as other:
        assert other.execute(text(f"SELECT count(*) FROM {probe}")).scalar_one() == 3


def test_a_lost_connection_raises_its_own_error_and_the_pool_recovers(
    engine: Engine, one_connection: Engine, probe: str
) -> None:
    with one_connection.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    insert = text(f"INSERT INTO {probe} (n) VALUES (1)")

    # The server's hang-up, not a complaint about switching a closed connection back.
    with pytest.raises(OperationalError) as lost:
        execute_autocommit(one_connection, insert, {})
    assert lost.value.connection_invalidated

    execute_autocommit(one_connection, insert, {})  # a new connection, same pool
    with engine.connect() as other:
        assert other.execute(text(f"SELECT count(*) FROM {probe}")).scalar_one() == 1


@pytest.fixture
def one_connection_database() -> Iterator[Database]:
    database = Database(dataclasses.replace(settings, db_pool_size=1, db_max_overflow=0))
    yield database
    database.engine.dispose()


def test_a_read_sends_neither_begin_nor_rollback(
    engine: Engine, one_connection_database: Database, probe: str
) -> None:
    database = one_connection_database
    with engine.begin() as connection:
        connection.execute(text(f"INSERT INTO {probe} (n) VALUES (1)"))

    with database.reading() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert session.execute(text(f"SELECT count(*) FROM {probe}")).scalar_one() == 1

    # Its last statement was the server's last word from it: no ROLLBACK at the end.
    assert last_sent(engine, pid) == f"SELECT count(*) FROM {probe}"
    # The connection went back out of autocommit: a transaction on it still rolls back.
    with pytest.raises(RuntimeError), database.transaction() as session:
        session.execute(text(f"INSERT INTO {probe} (n) VALUES (2)"))
        assert session.connection().connection.dbapi_connection.autocommit is False
        raise RuntimeError("roll back")
    with engine.connect() as other:
        assert other.execute(text(f"SELECT count(*) FROM {probe}")).scalar_one() == 1
