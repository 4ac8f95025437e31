"""Dead letters: Celery on Redis has none, so the base task parks its final failure.

`park` runs in the failing task's `on_failure`, before its message is acked, and
publishes to the `dead_letter` queue; `record_dead_letter` (consumed by the
dead-letter worker, which also makes the queue visible in Flower) stores it. If the
broker is down, `park` writes the row itself. Replaying goes through the outbox, so
a replay decided in a committed transaction is published even after a crash.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from celery import Task
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.errors import Conflict, NotFound
from models import DeadLetter, DeadLetterStatus, OutboxMessage, open_session
from tasks.celery_app import celery_app

log = logging.getLogger(__name__)

REPLAY_DEAD_LETTER = "replay_dead_letter"


def park(
    *,
    task: Task,
    exc: BaseException,
    traceback: str,
    args: list[Any],
    kwargs: dict[str, Any],
    first_failed_at: str | None,
) -> None:
    now = utcnow().isoformat()
    letter = {
        "task_name": task.name,
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "exception_message": str(exc)[:4000],
        "correlation_id": kwargs.get("correlation_id"),
        "task_id": task.request.id,
        "args": args,
        "kwargs": kwargs,
        "chain": list(task.request.chain or []),
        "traceback": traceback[-20000:],
        "retries": task.request.retries,
        "first_failed_at": first_failed_at or now,
        "last_failed_at": now,
    }
    log.error("dead-lettering %s: %s", task.name, letter["exception_message"])
    try:
        record_dead_letter.apply_async(kwargs=letter)
        return
    except Exception:
        log.exception("dead-letter publish failed; recording it directly")
    try:
        with open_session() as session, session.begin():
            store_dead_letter(session, letter)
    except Exception:
        # Last resort: the whole letter is in the log, to be re-entered by hand.
        log.critical("dead letter could not be recorded", extra={"dead_letter": letter})
        raise


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


@celery_app.task(
    bind=True,
    name="tutorflow.dead_letters.record",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,  # the database coming back is all it waits for
)
def record_dead_letter(self: Task, **letter: Any) -> None:
    with open_session() as session, session.begin():
        store_dead_letter(session, letter)


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


def replay(session: Session, letter_id: int) -> tuple[DeadLetter, OutboxMessage]:
    """Mark the letter replayed and queue the original task (and the rest of its chain)
    in the outbox, in the caller's transaction; the caller publishes after commit."""
    letter = _open_letter(session, letter_id)
    message = OutboxMessage(
        correlation_id=uuid.UUID(letter.correlation_id),
        kind=REPLAY_DEAD_LETTER,
        payload={
            "dead_letter_id": letter.id,
            "task_name": letter.task_name,
            "args": letter.args,
            "kwargs": letter.kwargs,
            "chain": letter.chain,
        },
    )
    session.add(message)
    letter.status = DeadLetterStatus.REPLAYED
    letter.resolved_at = utcnow()
    session.flush()
    return letter, message


def discard(session: Session, letter_id: int) -> DeadLetter:
    letter = _open_letter(session, letter_id)
    letter.status = DeadLetterStatus.DISCARDED
    letter.resolved_at = utcnow()
    return letter
