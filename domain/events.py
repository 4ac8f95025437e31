"""Domain events: written in the same transaction as the change they record.

The after-commit channel (models.effects, models.outbox) announces each written event
to its student (read models invalidated, a live event) once the transaction commits.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from models import DomainEvent, Payment, WrittenEvent, defer_event, traced


class EventType(StrEnum):
    PURCHASE_CONFIRMED = "PURCHASE_CONFIRMED"  # before verification existed (old rows)
    PAYMENT_CONFIRMATION_REQUESTED = "PAYMENT_CONFIRMATION_REQUESTED"
    PAYMENT_VERIFIED = "PAYMENT_VERIFIED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    PAYMENT_NOT_YET_PAID = "PAYMENT_NOT_YET_PAID"
    PURCHASE_CREATED = "PURCHASE_CREATED"
    TRAINER_ALLOCATED = "TRAINER_ALLOCATED"
    SESSIONS_GENERATED = "SESSIONS_GENERATED"
    SESSION_SHIFTED = "SESSION_SHIFTED"
    ALLOCATION_COMPLETED = "ALLOCATION_COMPLETED"
    PIPELINE_RESUMED = "PIPELINE_RESUMED"
    PAYMENT_REFUNDED = "PAYMENT_REFUNDED"
    SESSIONS_CANCELLED = "SESSIONS_CANCELLED"
    ALLOCATION_ENDED = "ALLOCATION_ENDED"
    PURCHASE_DEACTIVATED = "PURCHASE_DEACTIVATED"
    COMPENSATION_DONE = "COMPENSATION_DONE"
    SESSION_COMPLETED = "SESSION_COMPLETED"
    SESSION_CANCELLED = "SESSION_CANCELLED"
    SESSION_RESCHEDULED = "SESSION_RESCHEDULED"
    REALLOCATION_REQUESTED = "REALLOCATION_REQUESTED"
    TRAINER_REALLOCATED = "TRAINER_REALLOCATED"
    ALLOCATION_GIVEN_UP = "ALLOCATION_GIVEN_UP"
    # No trainer could take a paid checkout (its hold lapsed and the time was taken, or
    # its trainer left): refunded at once, never a dead letter (invariant 10).
    ALLOCATION_REFUSED = "ALLOCATION_REFUSED"
    # Its trainer left and nobody could take it: future sessions cancelled, waiting.
    ALLOCATION_WAITING = "ALLOCATION_WAITING"
    # A step failed and will run again: attempt n of m, with an operator-safe reason.
    STEP_RETRYING = "STEP_RETRYING"
    DEAD_LETTERED = "DEAD_LETTERED"
    DEAD_LETTER_REPLAYED = "DEAD_LETTER_REPLAYED"
    DEAD_LETTER_DISCARDED = "DEAD_LETTER_DISCARDED"


def record_event(
    session: Session,
    *,
    correlation_id: uuid.UUID,
    student_id: int | None,
    event_type: EventType,
    payload: dict[str, Any] | None = None,
) -> None:
    """Write the event in the current transaction (announced after its commit), with
    the active trace's id in its payload. It is inserted before the session's next
    statement, after its next flush, with the step's record, or at the commit
    (models.defer_event)."""
    defer_event(
        session,
        WrittenEvent(str(correlation_id), student_id, str(event_type), traced(payload or {})),
    )


def record_step_retry(
    session: Session,
    *,
    correlation_id: uuid.UUID,
    step: str,
    attempt: int,
    attempts: int | None,  # None: no limit
    reason: str,
) -> None:
    """One INSERT ... SELECT (the payment's student looked up in the same statement):
    it runs on every retry, in a transaction of its own. Not announced live: a retry
    changes nothing on the student's screens, only the payment's timeline and state."""
    payload = {"step": step, "attempt": attempt, "attempts": attempts, "reason": reason}
    session.execute(
        insert(DomainEvent).from_select(
            ["correlation_id", "student_id", "event_type", "payload"],
            select(
                Payment.id,
                Payment.student_id,
                literal(EventType.STEP_RETRYING.value),
                literal(payload, JSONB),
            ).where(Payment.id == correlation_id),
        )
    )
