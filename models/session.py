"""The database engine and sessions: the one place that opens connections.

A `Database` is one process's engine (its own pool) and session factory for one set of
settings. The composition root (bootstrap.py) makes one per settings and role, and
gives its sessions the after-commit channel (models.effects): whatever a transaction
wrote that the world must hear of is handed over only once it has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Executable, create_engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from models.effects import CHANNEL, Channel

log = logging.getLogger(__name__)


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

    def dispose_after_fork(self) -> None:
        """A forked child must not reuse its parent's sockets (Superset's pattern)."""
        self.engine.dispose(close=False)


def execute_autocommit(
    bind: Engine | Connection, statement: Executable, params: dict[str, Any]
) -> None:
    """Run one statement in its own implicit transaction: a single round trip, no
    session. On a Connection (the bind a sessionmaker may be given), it runs there, in
    that connection's transaction."""
    if isinstance(bind, Connection):
        bind.execute(statement, params)
        return
    with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(statement, params)
