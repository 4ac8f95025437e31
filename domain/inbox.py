"""The consumers' inbox (processed_events): at most one effect per message (the steps'
twin of the API's Idempotency-Key, domain.idempotency).

The row is claimed first, in the step's transaction. A duplicate delivered at the
same time blocks on the unique index until the first transaction ends: if that one
committed, the duplicate finds the row and returns the stored result; if it rolled
back, the duplicate claims the row and does the work itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import ProcessedEvent


@dataclass(frozen=True)
class Claim:
    row_id: int | None
    stored_result: Any = None

    @property
    def claimed(self) -> bool:
        return self.row_id is not None


def claim(session: Session, *, consumer: str, correlation_id: str, event_type: str) -> Claim:
    row_id = session.scalar(
        pg_insert(ProcessedEvent)
        .values(consumer=consumer, correlation_id=correlation_id, event_type=event_type)
        .on_conflict_do_nothing(constraint="uq_processed_events")
        .returning(ProcessedEvent.id)
    )
    if row_id is not None:
        return Claim(row_id)
    stored = session.scalar(
        select(ProcessedEvent.result).where(
            ProcessedEvent.consumer == consumer,
            ProcessedEvent.correlation_id == correlation_id,
            ProcessedEvent.event_type == event_type,
        )
    )
    return Claim(None, stored)


def store_result(session: Session, claim: Claim, result: Any) -> None:
    session.execute(
        update(ProcessedEvent).where(ProcessedEvent.id == claim.row_id).values(result=result)
    )
