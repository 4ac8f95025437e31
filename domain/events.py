"""Domain events: written in the same transaction as the change they record.

The after-commit channel (models.effects, tasks.effects) announces each written event
to its student (read models invalidated, a live event) once the transaction commits.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from models import DomainEvent


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


def record_event(
    session: Session,
    *,
    correlation_id: uuid.UUID,
    student_id: int,
    event_type: EventType,
    payload: dict[str, Any] | None = None,
) -> DomainEvent:
    """Add the event to the current transaction (announced after its commit)."""
    event = DomainEvent(
        correlation_id=correlation_id,
        student_id=student_id,
        event_type=event_type,
        payload=payload or {},
    )
    session.add(event)
    return event
