"""The one after-commit channel, and the Database objects that carry it.

Whatever a committed transaction wrote that the world must hear of (models.effects)
comes here: each new outbox message is published to the broker and stamped, and the
students whose events were written get their read models invalidated and a live event,
in one Redis round trip. Each callback runs on its own: one that raises is logged with
its correlation id and the others still run. A message that was not published stays
unpublished in the outbox, and the beat relay publishes it; a stale read model expires
by its TTL, and the chain's last step invalidates again with retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, update

from core import tracing
from core.cache import Cache
from core.config import Settings
from models import Committed, Database, OutboxMessage, WrittenOutbox, execute_autocommit
from tasks.handoff import PUBLISHERS

log = logging.getLogger(__name__)

STAMP_PUBLISHED = (
    update(OutboxMessage)
    .where(OutboxMessage.id.in_(bindparam("outbox_ids", expanding=True)))
    .where(OutboxMessage.published_at.is_(None))
    .values(published_at=func.now(), attempts=OutboxMessage.attempts + 1)
)


class AfterCommitChannel:
    def __init__(
        self, cache: Cache, publishers: dict[str, Callable[[dict[str, Any]], None]]
    ) -> None:
        self.cache = cache
        self.publishers = publishers

    def __call__(self, committed: Committed) -> None:
        published = [m for m in committed.outbox if self.publish(m)]
        if published:
            self.stamp(published, committed.bind)
        if committed.events:
            self.cache.announce(
                [(e.student_id, e.as_live_event()) for e in committed.events if e.student_id]
            )

    def publish(self, message: WrittenOutbox) -> bool:
        """Publish one outbox message; False (and logged) if the broker failed."""
        try:
            with tracing.publishing(message.id, message.correlation_id):
                self.publishers[message.kind](dict(message.payload))
        except Exception:
            log.warning(
                "outbox publish failed; the relay will retry",
                exc_info=True,
                extra={"outbox_id": message.id, "correlation_id": message.correlation_id},
            )
            return False
        return True

    @staticmethod
    def stamp(messages: list[WrittenOutbox], bind: Engine | Connection) -> None:
        """Stamp the published messages, all in one statement (a schedule step publishes
        its e-mails together)."""
        try:
            execute_autocommit(bind, STAMP_PUBLISHED, {"outbox_ids": [m.id for m in messages]})
        except Exception:
            # Published but not stamped: the relay publishes them again, which is harmless.
            log.warning(
                "outbox stamp failed",
                exc_info=True,
                extra={
                    "outbox_ids": [m.id for m in messages],
                    "correlation_id": messages[0].correlation_id,
                },
            )


_databases: dict[tuple[object, ...], Database] = {}
_lock = threading.Lock()


def database_for(settings: Settings, role: str = "worker") -> Database:
    """This process's Database for `settings` and `role` ("api" or "worker": their
    timeouts), its sessions wired to the after-commit channel: one engine (and pool) per
    database, role and cache, however many apps use it."""
    key = (
        role,
        settings.database_url,
        settings.db_connect_timeout,
        settings.api_statement_timeout_ms,
        settings.api_lock_timeout_ms,
        settings.worker_statement_timeout_ms,
        settings.worker_lock_timeout_ms,
        settings.db_pool_size,
        settings.db_max_overflow,
        settings.db_pool_pre_ping,
        settings.cache_url,
        settings.redis_sentinel_master,
    )
    with _lock:
        database = _databases.get(key)
        if database is None:
            channel = AfterCommitChannel(Cache.for_settings(settings), PUBLISHERS)
            database = _databases[key] = Database(settings, channel, role=role)
        return database


def dispose_after_fork() -> None:
    """In a forked pool child: drop every connection inherited from the parent."""
    for database in _databases.values():
        database.dispose_after_fork()
