"""A scheduled session's life after scheduling: completed or cancelled."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.errors import Conflict, NotFound
from domain.events import EventType, record_event
from models import Allocation, Purchase, SessionStatus, TutoringSession


def _scheduled(session: Session, session_id: int) -> TutoringSession:
    tutoring = session.scalar(
        select(TutoringSession).where(TutoringSession.id == session_id).with_for_update()
    )
    if tutoring is None:
        raise NotFound("session_not_found", "No session has this id.", id=session_id)
    if tutoring.status != SessionStatus.SCHEDULED:
        raise Conflict(
            "session_not_scheduled",
            f"The session is already {tutoring.status}.",
            id=session_id,
            status=tutoring.status,
        )
    return tutoring


def _record(session: Session, tutoring: TutoringSession, event_type: EventType) -> None:
    payment_id = session.execute(
        select(Purchase.payment_id)
        .join(Allocation, Allocation.purchase_id == Purchase.id)
        .where(Allocation.id == tutoring.allocation_id)
    ).scalar_one()
    record_event(
        session,
        correlation_id=payment_id,
        student_id=tutoring.student_id,
        event_type=event_type,
        payload={"session_id": tutoring.id, "date": tutoring.scheduled_date.isoformat()},
    )


def complete_session(session: Session, session_id: int, *, now: datetime) -> TutoringSession:
    tutoring = _scheduled(session, session_id)
    if tutoring.starts_at > now:
        raise Conflict(
            "session_not_started", "A session cannot end before it starts.", id=session_id
        )
    tutoring.status = SessionStatus.COMPLETED
    _record(session, tutoring, EventType.SESSION_COMPLETED)
    return tutoring


def cancel_session(session: Session, session_id: int, *, now: datetime) -> TutoringSession:
    """A cancelled session does not count against the tier: the top-up replaces it."""
    tutoring = _scheduled(session, session_id)
    if tutoring.starts_at <= now:
        raise Conflict(
            "session_already_started", "A started session cannot be cancelled.", id=session_id
        )
    tutoring.status = SessionStatus.CANCELLED
    _record(session, tutoring, EventType.SESSION_CANCELLED)
    return tutoring
