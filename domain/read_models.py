"""What the API shows: a payment with its fulfilment state and timeline."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Label, and_, func, or_, select
from sqlalchemy.orm import Session

from domain.bookings import is_live_hold
from domain.clock import utcnow
from domain.errors import NotFound
from domain.events import EventType
from models import (
    Allocation,
    AllocationStatus,
    Course,
    CoursePrice,
    DeadLetter,
    DeadLetterStatus,
    DomainEvent,
    FailureKind,
    Hold,
    Payment,
    PaymentStatus,
    Purchase,
    SessionStatus,
    Student,
    Trainer,
    TrainerCourse,
    TutoringSession,
)

UPCOMING_SHOWN = 7
# Letters that are no fault to attend to, by their kind of failure: the student waits.
NOT_A_FAULT = frozenset({FailureKind.NO_TRAINER})


def fulfilment_state(
    payment: Payment,
    purchase: Purchase | None,
    allocation: Allocation | None,
    sessions: int,
    open_dead_letters: int,
    retrying: bool = False,
) -> str:
    """`retrying`: the newest timeline event is a step's retry. It yields to an open
    letter and to a finished schedule (a retry of the last link changes neither)."""
    if payment.status == PaymentStatus.CONFIRMING and retrying:
        return "retrying"
    if payment.status != PaymentStatus.SUCCEEDED:
        return {"pending": "awaiting_payment", "confirming": "verifying"}.get(
            payment.status, payment.status
        )
    if open_dead_letters:
        return "needs_attention"
    if allocation is not None and allocation.status == AllocationStatus.WAITING:
        # Its trainer left and nobody is free yet: moved when one is, else refunded.
        return "waiting_for_trainer"
    if sessions:
        return "scheduled"
    if retrying:
        return "retrying"
    if allocation is not None:
        return "allocated"
    if purchase is not None:
        # Until ALLOCATION_GIVE_UP_HOURS pass (then it is refunded).
        return "finding_trainer"
    return "confirmed"


def payment_detail(
    session: Session, payment_id: uuid.UUID, *, student_id: int | None = None
) -> dict[str, Any]:
    """The payment with its fulfilment and timeline; for a student, only their own
    (another's is reported missing, so ids cannot be probed)."""
    row = session.execute(
        select(Payment, Purchase, Allocation, Trainer)
        .outerjoin(Purchase, Purchase.payment_id == Payment.id)
        .outerjoin(Allocation, Allocation.purchase_id == Purchase.id)
        .outerjoin(Trainer, Trainer.id == Allocation.trainer_id)
        .where(Payment.id == payment_id)
    ).one_or_none()
    if row is None or (student_id is not None and row[0].student_id != student_id):
        raise NotFound("payment_not_found", "No payment has this id.", payment_id=str(payment_id))
    payment, purchase, allocation, trainer = row

    sessions: list[TutoringSession] = []
    scheduled = 0
    if allocation is not None:
        scheduled = (
            session.scalar(
                select(func.count()).where(
                    TutoringSession.allocation_id == allocation.id,
                    TutoringSession.status != SessionStatus.CANCELLED,
                )
            )
            or 0
        )
        sessions = list(
            session.scalars(
                select(TutoringSession)
                .where(
                    TutoringSession.allocation_id == allocation.id,
                    TutoringSession.status == SessionStatus.SCHEDULED,
                    TutoringSession.starts_at > utcnow(),
                )
                .order_by(TutoringSession.starts_at)
                .limit(UPCOMING_SHOWN)
            )
        )
    letters = list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.correlation_id == str(payment.id))
            .order_by(DeadLetter.id)
        )
    )
    events = list(
        session.scalars(
            select(DomainEvent)
            .where(DomainEvent.correlation_id == payment.id)
            .order_by(DomainEvent.id)
        )
    )
    retrying = bool(events) and events[-1].event_type == EventType.STEP_RETRYING
    # No trainer free is no fault to attend to: the student waits, and is refunded
    # after ALLOCATION_GIVE_UP_HOURS (beat: give_up_unallocated).
    open_letters = sum(
        1
        for d in letters
        if d.status == DeadLetterStatus.OPEN and d.failure_kind not in NOT_A_FAULT
    )
    return {
        "payment": payment,
        "fulfilment": {
            "state": fulfilment_state(
                payment, purchase, allocation, scheduled, open_letters, retrying
            ),
            "purchase": purchase,
            "allocation": allocation
            and {
                "id": allocation.id,
                "status": allocation.status,
                "time_slot": allocation.time_slot,
                "sessions_total": allocation.sessions_total,
                # A waiting allocation's trainer is the one who left: nobody's, shown.
                "trainer": None
                if allocation.status == AllocationStatus.WAITING
                else {"id": trainer.id, "name": trainer.name},
            },
            "sessions_scheduled": scheduled,
            "upcoming_sessions": sessions,
            "dead_letters": letters,
        },
        "timeline": events,
    }


def list_dead_letters(
    session: Session,
    *,
    status: str | None = None,
    task_name: str | None = None,
    correlation_id: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> tuple[list[DeadLetter], int]:
    """One page of dead letters, newest first, and the total matching the filters."""
    conditions = []
    if status:
        conditions.append(DeadLetter.status == status)
    if task_name:
        conditions.append(DeadLetter.task_name == task_name)
    if correlation_id:
        conditions.append(DeadLetter.correlation_id == correlation_id)
    total = session.scalar(select(func.count()).select_from(DeadLetter).where(*conditions)) or 0
    letters = session.scalars(
        select(DeadLetter)
        .where(*conditions)
        .order_by(DeadLetter.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    return list(letters), total


def get_dead_letter(session: Session, letter_id: int) -> DeadLetter:
    letter = session.get(DeadLetter, letter_id)
    if letter is None:
        raise NotFound("dead_letter_not_found", "No dead letter has this id.", id=letter_id)
    return letter


@dataclass(frozen=True)
class CatalogueCourse:
    course: Course
    purchasable: bool


def _purchasable() -> Label[bool]:
    """Whether a course (of the enclosing query) can be bought now: it has a price, and
    an active trainer who teaches it has a place left (allocations and checkouts' live
    holds below max_students). Which times can be bought: availability.offers."""
    priced = select(CoursePrice.course_id).where(CoursePrice.course_id == Course.id).exists()
    held = (
        select(func.count())
        .where(Hold.trainer_id == Trainer.id, is_live_hold(utcnow()))
        .scalar_subquery()
    )
    has_room = (
        select(TrainerCourse.course_id)
        .join(Trainer, Trainer.id == TrainerCourse.trainer_id)
        .where(
            TrainerCourse.course_id == Course.id,
            Trainer.is_active,
            Trainer.active_students + held < Trainer.max_students,
        )
        .exists()
    )
    return and_(priced, has_room).label("purchasable")


def list_courses(
    session: Session, *, page: int = 1, per_page: int = 50
) -> tuple[list[CatalogueCourse], int]:
    """One page of the catalogue, by id, and the number of courses."""
    total = session.scalar(select(func.count()).select_from(Course)) or 0
    rows = session.execute(
        select(Course, _purchasable())
        .order_by(Course.id)
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    return [CatalogueCourse(course, purchasable) for course, purchasable in rows], total


def get_course(session: Session, course_id: int) -> CatalogueCourse:
    row = session.execute(select(Course, _purchasable()).where(Course.id == course_id)).first()
    if row is None:
        raise NotFound("unknown_course", "No course has this id.", id=course_id)
    return CatalogueCourse(row[0], row[1])


UPCOMING_ON_HOME = 10


def get_student(session: Session, student_id: int) -> Student:
    student = session.get(Student, student_id)
    if student is None:
        raise NotFound("student_not_found", "No student has this id.", id=student_id)
    return student


def _session_counts(session: Session, allocation_ids: list[int], now) -> dict[int, dict]:
    if not allocation_ids:
        return {}
    done = or_(
        TutoringSession.status == SessionStatus.COMPLETED,
        and_(TutoringSession.status == SessionStatus.SCHEDULED, TutoringSession.starts_at <= now),
    )
    upcoming = and_(
        TutoringSession.status == SessionStatus.SCHEDULED, TutoringSession.starts_at > now
    )
    rows = session.execute(
        select(
            TutoringSession.allocation_id,
            func.count().filter(done),
            func.count().filter(upcoming),
            func.min(TutoringSession.starts_at).filter(upcoming),
        )
        .where(TutoringSession.allocation_id.in_(allocation_ids))
        .group_by(TutoringSession.allocation_id)
    )
    return {a: {"done": d, "upcoming": u, "next": n} for a, d, u, n in rows}


def _courses(session: Session, student_id: int, now, *, active_only: bool) -> list[dict]:
    query = (
        select(Purchase, Course.title, Allocation, Trainer.name)
        .join(Course, Course.id == Purchase.course_id)
        .outerjoin(Allocation, Allocation.purchase_id == Purchase.id)
        .outerjoin(Trainer, Trainer.id == Allocation.trainer_id)
        .where(Purchase.student_id == student_id)
        .order_by(Purchase.id)
    )
    if active_only:
        query = query.where(Purchase.is_active)
    rows = session.execute(query).all()
    counts = _session_counts(session, [a.id for _, _, a, _ in rows if a is not None], now)
    courses = []
    for purchase, title, allocation, trainer_name in rows:
        numbers = counts.get(allocation.id if allocation else -1, {})
        done = numbers.get("done", 0)
        courses.append(
            {
                "course_id": purchase.course_id,
                "title": title,
                "payment_id": str(purchase.payment_id),
                "tier": purchase.tier,
                "time_slot": purchase.time_slot,
                "active": purchase.is_active,
                "status": allocation.status if allocation else "finding_trainer",
                "trainer": None
                if allocation is None or allocation.status == AllocationStatus.WAITING
                else trainer_name,
                "sessions_done": done,
                "sessions_upcoming": numbers.get("upcoming", 0),
                "sessions_remaining": purchase.tier - done,
                "next_session_at": numbers.get("next"),
            }
        )
    return courses


def student_home(session: Session, student_id: int, *, now) -> dict[str, Any]:
    """Overview, upcoming sessions with trainer and course, active courses."""
    student = get_student(session, student_id)
    upcoming = session.execute(
        select(
            TutoringSession.id,
            TutoringSession.scheduled_date,
            TutoringSession.scheduled_time,
            TutoringSession.starts_at,
            Course.title,
            Trainer.name,
        )
        .join(Allocation, Allocation.id == TutoringSession.allocation_id)
        .join(Course, Course.id == Allocation.course_id)
        .join(Trainer, Trainer.id == TutoringSession.trainer_id)
        .where(
            TutoringSession.student_id == student_id,
            TutoringSession.status == SessionStatus.SCHEDULED,
            TutoringSession.starts_at > now,
        )
        .order_by(TutoringSession.starts_at)
        .limit(UPCOMING_ON_HOME)
    ).all()
    courses = _courses(session, student_id, now, active_only=True)
    return {
        "student": {"id": student.id, "name": student.name, "timezone": student.timezone},
        "upcoming_sessions": [
            {
                "id": row.id,
                "date": row.scheduled_date,
                "time": row.scheduled_time,
                "starts_at": row.starts_at,
                "course": row.title,
                "trainer": row.name,
            }
            for row in upcoming
        ],
        "active_courses": courses,
        "generated_at": now,
    }


def student_learning(session: Session, student_id: int, *, now) -> dict[str, Any]:
    """Per course: tier, sessions done and remaining, next session."""
    get_student(session, student_id)
    courses = _courses(session, student_id, now, active_only=False)
    return {"student_id": student_id, "courses": courses, "generated_at": now}


RECENT_LIMIT = 100


def recent_events(
    session: Session, student_id: int | None, *, since: int, limit: int = RECENT_LIMIT
) -> dict[str, Any]:
    """Events after the cursor `since` (an event id), oldest first: the polling fallback.
    For one student; None (an operator's view): every student's."""
    if student_id is not None:
        get_student(session, student_id)
    events = session.scalars(
        select(DomainEvent)
        .where(
            DomainEvent.id > since,
            *([DomainEvent.student_id == student_id] if student_id is not None else []),
        )
        .order_by(DomainEvent.id)
        .limit(limit)
    ).all()
    return {
        "events": [
            {
                "id": e.id,
                "type": e.event_type,
                "payment_id": str(e.correlation_id),
                "at": e.occurred_at,
                "payload": e.payload,
            }
            for e in events
        ],
        "next_since": events[-1].id if events else since,
    }
