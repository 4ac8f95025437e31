"""Domain events: written with the change they record, announced after its commit."""

from __future__ import annotations

import uuid
from enum import StrEnum
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from core.cache import notify_student
from models import DomainEvent, after_commit


class EventType(StrEnum):
    PURCHASE_CONFIRMED = "PURCHASE_CONFIRMED"
    PURCHASE_CREATED = "PURCHASE_CREATED"
    TRAINER_ALLOCATED = "TRAINER_ALLOCATED"
    SESSIONS_GENERATED = "SESSIONS_GENERATED"
    ALLOCATION_COMPLETED = "ALLOCATION_COMPLETED"
    PIPELINE_RESUMED = "PIPELINE_RESUMED"
    PAYMENT_REFUNDED = "PAYMENT_REFUNDED"
    SESSIONS_CANCELLED = "SESSIONS_CANCELLED"
    ALLOCATION_ENDED = "ALLOCATION_ENDED"
    PURCHASE_DEACTIVATED = "PURCHASE_DEACTIVATED"
    COMPENSATION_DONE = "COMPENSATION_DONE"
    SESSION_COMPLETED = "SESSION_COMPLETED"
    SESSION_CANCELLED = "SESSION_CANCELLED"


def record_event(
    session: Session,
    *,
    correlation_id: uuid.UUID,
    student_id: int,
    event_type: EventType,
    payload: dict[str, Any] | None = None,
) -> None:
    """Add the event to the current transaction; after commit, refresh the student."""
    payload = payload or {}
    session.add(
        DomainEvent(
            correlation_id=correlation_id,
            student_id=student_id,
            event_type=event_type,
            payload=payload,
        )
    )
    announce_after_commit(session, correlation_id, student_id, event_type, payload)


def announce_after_commit(
    session: Session,
    correlation_id: uuid.UUID,
    student_id: int,
    event_type: EventType,
    payload: dict[str, Any],
) -> None:
    """For an event written in this transaction (by record_event or by SQL directly):
    invalidate the student's read models and publish the live event, after commit."""
    live_event = {
        "type": str(event_type),
        "payment_id": str(correlation_id),
        "student_id": student_id,
        **payload,
    }
    after_commit(session, partial(notify_student, student_id, live_event))
