"""The consumers' inbox (processed_events): at most one effect per message (the steps'
twin of the API's Idempotency-Key, domain.idempotency).

The row is claimed first, in the step's transaction. A duplicate delivered at the
same time blocks on the unique index until the first transaction ends: if that one
committed, the duplicate finds the row and returns the stored result; if it rolled
back, the duplicate claims the row and does the work itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

# Three statements a step, on every step of every payment: plain SQL, so SQLAlchemy
# neither compiles them afresh each time (its PostgreSQL INSERT … ON CONFLICT has no
# cache key) nor computes cache keys (BENCHMARKS.md, "Issue 25"). The table and its
# unique constraint are models.ProcessedEvent's.
_CLAIM = text(
    "INSERT INTO processed_events (consumer, correlation_id, event_type)"
    " VALUES (:consumer, :correlation_id, :event_type)"
    " ON CONFLICT ON CONSTRAINT uq_processed_events DO NOTHING RETURNING id"
)
_STORED = text(
    "SELECT result FROM processed_events WHERE consumer = :consumer"
    " AND correlation_id = :correlation_id AND event_type = :event_type"
)
STORE_SQL = "UPDATE processed_events SET result = CAST(:result AS jsonb) WHERE id = :row_id"
_STORE = text(STORE_SQL)


@dataclass(frozen=True)
class Claim:
    row_id: int | None
    stored_result: Any = None

    @property
    def claimed(self) -> bool:
        return self.row_id is not None


def claim(session: Session, *, consumer: str, correlation_id: str, event_type: str) -> Claim:
    key = {"consumer": consumer, "correlation_id": correlation_id, "event_type": event_type}
    row_id = session.scalar(_CLAIM, key)
    if row_id is not None:
        return Claim(row_id)
    # A new statement, so a new snapshot: it sees the row of a duplicate that committed
    # while this one waited on the unique index.
    return Claim(None, session.scalar(_STORED, key))


def store_result(session: Session, claim: Claim, result: Any) -> None:
    session.execute(_STORE, store_params(claim, result))


def store_params(claim: Claim, result: Any) -> dict[str, Any]:
    """STORE_SQL's parameters (a writer that runs it inside a statement of its own)."""
    return {"result": json.dumps(result), "row_id": claim.row_id}
