"""Dead letters as rows: recorded once per failed task id, replayed or discarded once.

Replaying writes an outbox message in the caller's transaction: a replay decided in a
committed transaction is published after that commit (by the after-commit channel, or
by the beat relay after a crash).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.errors import Conflict, NotFound
from models import DeadLetter, DeadLetterStatus, OutboxKind, OutboxMessage


def store_dead_letter(session: Session, letter: dict[str, Any]) -> None:
    """Insert, or — for a redelivered failure of the same task id — update, the row."""
    values = {
        **letter,
        "first_failed_at": datetime.fromisoformat(letter["first_failed_at"]),
        "last_failed_at": datetime.fromisoformat(letter["last_failed_at"]),
    }
    insert = pg_insert(DeadLetter).values(**values)
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[DeadLetter.task_id],
            set_={
                "last_failed_at": insert.excluded.last_failed_at,
                "retries": insert.excluded.retries,
                "exception_type": insert.excluded.exception_type,
                "exception_message": insert.excluded.exception_message,
                "traceback": insert.excluded.traceback,
            },
        )
    )


def _open_letter(session: Session, letter_id: int) -> DeadLetter:
    letter = session.scalar(select(DeadLetter).where(DeadLetter.id == letter_id).with_for_update())
    if letter is None:
        raise NotFound("dead_letter_not_found", "No dead letter has this id.", id=letter_id)
    if letter.status != DeadLetterStatus.OPEN:
        raise Conflict(
            "dead_letter_not_open",
            f"The dead letter is already {letter.status}.",
            id=letter_id,
            status=letter.status,
        )
    return letter


def replay(session: Session, letter_id: int) -> DeadLetter:
    """Mark the letter replayed and queue the original task (and the rest of its chain)
    in the outbox, in the caller's transaction."""
    letter = _open_letter(session, letter_id)
    session.add(
        OutboxMessage(
            correlation_id=uuid.UUID(letter.correlation_id),
            kind=OutboxKind.REPLAY_DEAD_LETTER,
            payload={
                "dead_letter_id": letter.id,
                "task_name": letter.task_name,
                "args": letter.args,
                "kwargs": letter.kwargs,
                "chain": letter.chain,
            },
        )
    )
    letter.status = DeadLetterStatus.REPLAYED
    letter.resolved_at = utcnow()
    session.flush()
    return letter


def discard(session: Session, letter_id: int) -> DeadLetter:
    letter = _open_letter(session, letter_id)
    letter.status = DeadLetterStatus.DISCARDED
    letter.resolved_at = utcnow()
    return letter


def open_letter_ids(
    session: Session, *, task_name: str | None = None, correlation_id: str | None = None
) -> list[int]:
    """Open letters matching the filters, oldest first (bulk replay)."""
    return list(
        session.scalars(
            select(DeadLetter.id)
            .where(
                DeadLetter.status == DeadLetterStatus.OPEN,
                *([DeadLetter.task_name == task_name] if task_name else []),
                *([DeadLetter.correlation_id == correlation_id] if correlation_id else []),
            )
            .order_by(DeadLetter.id)
        )
    )
