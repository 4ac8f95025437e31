"""The consumers' inbox (processed_events): at most one effect per message (the steps'
twin of the API's Idempotency-Key, domain.idempotency).

The row is written last, in the step's transaction, with the step's result: its INSERT
decides. Its ON CONFLICT waits on the unique index for a duplicate's transaction still
open: if that one commits (or had committed), no row goes in, and the step rolls back
its whole effect and returns the stored result instead (actions.steps.once reads it in
a new transaction, so a new snapshot); if that one rolls back, this row goes in.

So a duplicate runs its effect once more, on the state the first run left (the rows
it locks make it wait for that run), and throws it away; an effect is written to be
harmless there (each one is idempotent on its own rows), and an error it raises there
gives way to the stored result too. A first delivery, every step of every payment,
pays one statement for the inbox instead of a claim before and a store after
(BENCHMARKS.md, "Issue 25").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

# Plain SQL, so SQLAlchemy neither compiles them afresh each time (its PostgreSQL
# INSERT … ON CONFLICT has no cache key) nor computes cache keys (BENCHMARKS.md,
# "Issue 25"). The table and its unique constraint are models.ProcessedEvent's. The
# store's parameters are prefixed: it runs inside other statements (domain.step_runs).
STORE_SQL = (
    "INSERT INTO processed_events (consumer, correlation_id, event_type, result)"
    " VALUES (:inbox_consumer, :inbox_correlation_id, :inbox_event_type,"
    " CAST(:inbox_result AS jsonb))"
    " ON CONFLICT ON CONSTRAINT uq_processed_events DO NOTHING RETURNING id"
)
_STORE = text(STORE_SQL)
_STORED = text(
    "SELECT result FROM processed_events WHERE consumer = :consumer"
    " AND correlation_id = :correlation_id AND event_type = :event_type"
)


@dataclass(frozen=True)
class Key:
    """One message as its consumer sees it: the inbox row's unique key."""

    consumer: str
    correlation_id: str
    event_type: str

    def params(self) -> dict[str, str]:
        return {
            "consumer": self.consumer,
            "correlation_id": self.correlation_id,
            "event_type": self.event_type,
        }


@dataclass(frozen=True)
class Stored:
    """A committed run's result (None is a result too: a refused allocation's)."""

    result: Any


def store(session: Session, key: Key, result: Any) -> bool:
    """The row with the step's result, in the step's transaction. False: a duplicate's
    row is there (committed first); the caller rolls its effect back."""
    return session.scalar(_STORE, store_params(key, result)) is not None


def store_params(key: Key, result: Any) -> dict[str, Any]:
    """STORE_SQL's parameters (a writer that runs it inside a statement of its own)."""
    params: dict[str, Any] = {f"inbox_{name}": value for name, value in key.params().items()}
    params["inbox_result"] = json.dumps(result)
    return params


def stored(session: Session, key: Key) -> Stored | None:
    """The committed row's result, if the message was processed."""
    row = session.execute(_STORED, key.params()).one_or_none()
    return None if row is None else Stored(row.result)
