"""The database engine and sessions: the one place that opens connections.

Both the API and the workers take sessions from `SessionFactory`. Work that must follow
a commit (publishing a task, invalidating a cache, a live event) is queued with
`after_commit(session, fn)`: it runs only once the transaction is committed and is
dropped on rollback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, Executable, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.config import settings

log = logging.getLogger(__name__)

_CALLBACKS = "after_commit_callbacks"

SessionFactory = sessionmaker(expire_on_commit=False)
_engine: Engine | None = None


def init_engine(url: str | None = None, **overrides) -> Engine:
    """Create this process's engine (once) and bind the session factory to it."""
    global _engine
    if _engine is None:
        _engine = create_engine(
            url or settings.database_url,
            pool_size=overrides.pop("pool_size", settings.db_pool_size),
            max_overflow=overrides.pop("max_overflow", settings.db_max_overflow),
            pool_pre_ping=settings.db_pool_pre_ping,
            **overrides,
        )
        SessionFactory.configure(bind=_engine)
    return _engine


def get_engine() -> Engine:
    return _engine or init_engine()


def open_session() -> Session:
    """A new session on this process's engine (created on first use)."""
    get_engine()
    return SessionFactory()


def execute_autocommit(statement: Executable, params: dict[str, Any]) -> None:
    """Run one statement in its own implicit transaction: a single round trip, no
    session. (When tests bind the factory to one connection, it runs on that.)"""
    bind = SessionFactory.kw.get("bind") or get_engine()
    if isinstance(bind, Connection):
        bind.execute(statement, params)
        return
    with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(statement, params)


def dispose_engine_after_fork() -> None:
    """A forked child must not reuse its parent's sockets (Superset's pattern)."""
    if _engine is not None:
        _engine.dispose(close=False)


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    session.info.setdefault(_CALLBACKS, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    callbacks = session.info.pop(_CALLBACKS, [])
    for callback in callbacks:
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(_CALLBACKS, None)
