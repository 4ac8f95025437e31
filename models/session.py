"""The database engine and sessions: the one place that opens connections.

A `Database` is one process's engine (its own pool) and session factory for one set of
settings. The composition root (bootstrap.py) makes one per settings and role, and
gives its sessions the after-commit channel (models.effects): whatever a transaction
wrote that the world must hear of is handed over only once it has committed.

`DATABASE_URL` may name several servers (a replicated cluster: `?host=a:5432&host=
b:5432&target_session_attrs=read-write`): libpq tries them in turn, each for at most
`DB_CONNECT_TIMEOUT`, and keeps the one that takes writes. A connection that finds its
server demoted (read-only) is treated as lost, like one whose server vanished:
docs/across-hosts.md, "PostgreSQL failover".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Executable, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from models.effects import CHANNEL, Channel

log = logging.getLogger(__name__)
# SQLSTATE 25006: "cannot execute INSERT in a read-only transaction", a standby's answer.
READ_ONLY_SQL_TRANSACTION = "25006"
LOCK_NOT_AVAILABLE = "55P03"


class Database:
    """`role` "api" or "worker" picks the PostgreSQL statement and lock timeouts every
    connection of this engine runs under."""

    def __init__(
        self, settings: Settings, channel: Channel | None = None, *, role: str = "worker"
    ) -> None:
        self.url = settings.database_url
        self.role = role
        statement, lock = (
            (settings.api_statement_timeout_ms, settings.api_lock_timeout_ms)
            if role == "api"
            else (settings.worker_statement_timeout_ms, settings.worker_lock_timeout_ms)
        )
        self.engine: Engine = create_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_pre_ping=settings.db_pool_pre_ping,
            connect_args={
                "connect_timeout": settings.db_connect_timeout,
                # The server's side of a lost client: a transaction left open by a
                # process cut off mid-step would hold its row locks (a trainer's, say)
                # until TCP gave up, hours later. The server probes idle clients after
                # 5 s and ends a transaction idle for 30 s (no step's transaction idles:
                # the provider is asked outside them).
                "options": (
                    f"-c statement_timeout={statement} -c lock_timeout={lock}"
                    " -c idle_in_transaction_session_timeout=30000"
                    " -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2"
                    " -c tcp_keepalives_count=3"
                ),
                "application_name": f"tutorflow-{role}",
                # A link that goes dark (a partition, a lost host) must fail the
                # statement in seconds, not after TCP's ~15 minutes of retransmits:
                # unacknowledged data gives up after 10 s, an idle connection is probed
                # after 5 s. The statement_timeout above cannot help there: the server
                # never hears from the client.
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "tcp_user_timeout": 10_000,
            },
        )
        event.listen(self.engine, "handle_error", _a_demoted_server_is_a_lost_connection)
        self.sessions = sessionmaker(
            bind=self.engine, expire_on_commit=False, info={CHANNEL: channel}
        )

    def session(self) -> Session:
        return self.sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits at the end (then the channel runs), or rolls back."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads that need no transaction (one statement, or several
        that need not see one snapshot): each statement commits on its own, so no BEGIN
        and no ROLLBACK go to the server, two round trips fewer than `session()`. For
        writes, `transaction()`. Sessions configured onto a Connection (the tests'
        transaction) read there, in it."""
        if isinstance(self.sessions.kw.get("bind"), Connection):
            with self.sessions() as session:
                yield session
            return
        with (
            _driver_autocommit(self.engine) as connection,
            self.sessions(bind=connection) as session,
        ):
            yield session

    def dispose_after_fork(self) -> None:
        """A forked child must not reuse its parent's sockets (Superset's pattern)."""
        self.engine.dispose(close=False)


def _a_demoted_server_is_a_lost_connection(context: ExceptionContext) -> BaseException | None:
    """A write refused as read-only means the server this pooled connection reached is
    no longer the primary (a failover demoted it): the connection is dropped (and the
    pool with it) and the error becomes the OperationalError of a lost connection, so
    the API answers 503 and a task retries, and the next connection finds the primary."""
    original = context.original_exception
    if getattr(original, "pgcode", None) != READ_ONLY_SQL_TRANSACTION:
        return None
    context.is_disconnect = True
    return OperationalError(
        context.statement, context.parameters, original, connection_invalidated=True
    )


def database_unreachable(error: BaseException | None) -> bool:
    """The error says no server could be reached or the connection was lost (a restart,
    a failover, a dead link), not that a statement failed on a working connection: no
    SQLSTATE, or SQLAlchemy saw a disconnect."""
    if not isinstance(error, DBAPIError):
        return False
    return error.connection_invalidated or getattr(error.orig, "pgcode", None) is None


def lock_not_available(error: BaseException | None) -> bool:
    """The statement gave up waiting for a row lock (lock_timeout). Its holder may be a
    worker cut off mid-transaction: PostgreSQL releases its locks only when it ends that
    transaction (keepalives, idle_in_transaction_session_timeout: up to 30 s)."""
    return isinstance(error, DBAPIError) and (
        getattr(error.orig, "pgcode", None) == LOCK_NOT_AVAILABLE
    )


def execute_autocommit(
    bind: Engine | Connection, statement: Executable, params: dict[str, Any]
) -> None:
    """Run one statement in its own implicit transaction: a single round trip, no
    session. On a Connection (the bind a sessionmaker may be given), it runs there, in
    that connection's transaction."""
    if isinstance(bind, Connection):
        bind.execute(statement, params)
        return
    with _driver_autocommit(bind) as connection:
        connection.execute(statement, params)


@contextmanager
def _driver_autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled connection with the driver's autocommit on (each statement commits on
    its own: psycopg2 sends no BEGIN), given back with it off.

    Not SQLAlchemy's `isolation_level="AUTOCOMMIT"`: its reset on return sets READ
    COMMITTED explicitly, after which psycopg2 sends `SET default_transaction_isolation
    TO DEFAULT` on every later switch, one more round trip each time, three a payment
    (BENCHMARKS.md, "Issue 25, eleventh session")."""
    with engine.connect() as connection:
        driver = connection.connection.dbapi_connection
        assert driver is not None  # a connection just checked out of the pool
        driver.autocommit = True
        try:
            yield connection
        finally:
            if not driver.closed:  # a lost connection is invalidated, not given back
                driver.autocommit = False
