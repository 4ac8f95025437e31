"""A scheduled session's life after scheduling: moved or cancelled by its student (at
least 24 hours ahead), completed or cancelled by an operator.

A move takes the trainer's row lock first, like every writer of a trainer's sessions
(domain.bookings), then checks the new interval against the trainer's hours and booked
sessions; the exclusion constraint is the last word (a clash that slipped through is a
409, never a 500).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain import notifications
from domain.bookings import trainer_calendars
from domain.calendar import Busy
from domain.errors import Conflict, NotFound
from domain.events import EventType, record_event
from models import Allocation, Purchase, SessionStatus, Student, TutoringSession

# A student may move or cancel a session only this long before it starts (and move it
# only to a time at least this far ahead): the trainer's day is planned by then.
STUDENT_NOTICE = timedelta(hours=24)


def _scheduled(
    session: Session, session_id: int, *, student_id: int | None = None
) -> TutoringSession:
    """The session, locked; a student's own only (another's is reported missing)."""
    tutoring = session.scalar(
        select(TutoringSession)
        .where(TutoringSession.id == session_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if tutoring is None or (student_id is not None and tutoring.student_id != student_id):
        raise NotFound("session_not_found", "No session has this id.", id=session_id)
    if tutoring.status != SessionStatus.SCHEDULED:
        raise Conflict(
            "session_not_scheduled",
            f"The session is already {tutoring.status}.",
            id=session_id,
            status=tutoring.status,
        )
    return tutoring


def _record(
    session: Session, tutoring: TutoringSession, event_type: EventType, **payload: object
) -> uuid.UUID:
    """The event on the session's payment's timeline; returns that payment's id."""
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
        payload={"session_id": tutoring.id, "date": tutoring.scheduled_date.isoformat(), **payload},
    )
    return payment_id


def _too_late(session_id: int, what: str) -> Conflict:
    return Conflict(
        "too_late",
        f"A session can be {what} only at least 24 hours before it starts.",
        id=session_id,
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


def cancel_session(
    session: Session, session_id: int, *, now: datetime, student_id: int | None = None
) -> TutoringSession:
    """A cancelled session does not count against the tier: the top-up replaces it. A
    student cancels their own at least 24 hours ahead; an operator any time before it
    starts."""
    tutoring = _scheduled(session, session_id, student_id=student_id)
    if tutoring.starts_at <= now:
        raise Conflict(
            "session_already_started", "A started session cannot be cancelled.", id=session_id
        )
    if student_id is not None and tutoring.starts_at < now + STUDENT_NOTICE:
        raise _too_late(session_id, "cancelled")
    tutoring.status = SessionStatus.CANCELLED
    _record(
        session, tutoring, EventType.SESSION_CANCELLED, by="student" if student_id else "operator"
    )
    return tutoring


def reschedule_session(
    session: Session,
    session_id: int,
    *,
    starts_at: datetime,
    now: datetime,
    student_id: int | None = None,
) -> TutoringSession:
    """Move a session to `starts_at` (an instant; its length is kept): at least 24 hours
    ahead, from a session at least 24 hours ahead, inside the trainer's working hours,
    clashing with none of the trainer's or the student's other sessions."""
    starts_at = starts_at.astimezone(UTC)  # an instant; the offset it came with is gone
    found = session.get(TutoringSession, session_id)
    if found is None or (student_id is not None and found.student_id != student_id):
        raise NotFound("session_not_found", "No session has this id.", id=session_id)
    # The trainer first (the order every writer of a trainer's sessions locks in).
    calendar = trainer_calendars(session, [found.trainer_id], now=now)[found.trainer_id]
    tutoring = _scheduled(session, session_id, student_id=student_id)
    if tutoring.trainer_id != found.trainer_id:
        raise Conflict(
            "session_moved", "The session moved to another trainer meanwhile.", id=session_id
        )
    if tutoring.starts_at < now + STUDENT_NOTICE or starts_at < now + STUDENT_NOTICE:
        raise _too_late(session_id, "moved")
    try:
        ends_at = starts_at + (tutoring.ends_at - tutoring.starts_at)
    except OverflowError:  # the end of time (a valid date-time of year 9999): nobody works
        ends_at = None
    if ends_at is None or not calendar.hours.contains(starts_at, ends_at):
        raise Conflict(
            "outside_working_hours",
            "The trainer does not work at that time.",
            id=session_id,
            trainer_timezone=calendar.hours.timezone,
        )
    others = Busy(i for i in calendar.busy if i != (tutoring.starts_at, tutoring.ends_at))
    if others.overlaps(starts_at, ends_at):
        raise Conflict("slot_taken", "The trainer is booked at that time.", id=session_id)
    if _student_busy(session, tutoring, starts_at, ends_at):
        raise Conflict("student_busy", "You have another session at that time.", id=session_id)
    timezone = session.get_one(Student, tutoring.student_id).timezone
    local = starts_at.astimezone(ZoneInfo(timezone))
    was = tutoring.starts_at
    try:
        with session.begin_nested():
            tutoring.starts_at, tutoring.ends_at = starts_at, ends_at
            tutoring.scheduled_date, tutoring.scheduled_time = local.date(), local.time()
            session.flush()
    except IntegrityError as exc:  # the constraint's word under a race
        raise Conflict("slot_taken", "The trainer is booked at that time.", id=session_id) from exc
    payment_id = _record(
        session,
        tutoring,
        EventType.SESSION_RESCHEDULED,
        starts_at=starts_at.isoformat(),
        was=was.isoformat(),
    )
    notifications.session_rescheduled_notice(session, payment_id, tutoring, was)
    return tutoring


def _student_busy(
    session: Session, tutoring: TutoringSession, starts_at: datetime, ends_at: datetime
) -> bool:
    return (
        session.scalar(
            select(TutoringSession.id)
            .where(
                TutoringSession.student_id == tutoring.student_id,
                TutoringSession.id != tutoring.id,
                TutoringSession.status == SessionStatus.SCHEDULED,
                TutoringSession.starts_at < ends_at,
                TutoringSession.ends_at > starts_at,
            )
            .limit(1)
        )
        is not None
    )
