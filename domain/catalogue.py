"""Catalogue writes: students, courses, trainers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time

from sqlalchemy import (
    ARRAY,
    Insert,
    SmallInteger,
    Time,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    true,
)
from sqlalchemy.orm import Session

from domain.bookings import allocations_outside_hours, holding_allocations
from domain.calendar import DEFAULT_WORKING_DAYS, END_OF_DAY
from domain.errors import Conflict, NotFound
from domain.reallocation import request_reallocation, wake_waiting
from models import Course, CoursePrice, Student, Trainer, TrainerCourse, WorkingDay


def _email_taken(session: Session, model: type[Student] | type[Trainer], email: str) -> bool:
    return bool(session.scalar(select(exists().where(model.email == email))))


def create_student(session: Session, *, name: str, email: str, timezone: str) -> Student:
    if _email_taken(session, Student, email):
        raise Conflict("email_taken", "A student with this email exists.", field="email")
    student = Student(name=name, email=email, timezone=timezone)
    session.add(student)
    session.flush()
    return student


DEFAULT_PRICES = {10: 9900, 20: 18900, 30: 26900}


def create_course(
    session: Session,
    *,
    title: str,
    currency: str = "EUR",
    session_minutes: int = 60,
    prices: Mapping[int, int] | None = None,
) -> Course:
    """A course with a price (in cents of `currency`) for each tier: `prices` overrides
    the defaults tier by tier."""
    course = Course(title=title, currency=currency, session_minutes=session_minutes)
    chosen = {**DEFAULT_PRICES, **(prices or {})}
    course.prices = [CoursePrice(tier=tier, amount_cents=chosen[tier]) for tier in sorted(chosen)]
    session.add(course)
    session.flush()
    return course


def update_course(
    session: Session,
    course_id: int,
    *,
    title: str | None = None,
    session_minutes: int | None = None,
    prices: Mapping[int, int] | None = None,
) -> Course:
    """Change a course's title, session length or prices (`prices`: only the tiers
    given). The currency stays.

    A new price is what checkouts charge from now on: a payment keeps the amount and
    currency it was created at (copied at checkout), and verification compares the
    provider's answer with that copy. A new `session_minutes` is the length of the
    sessions scheduled from now on (the chain, top-ups, the tier's projection when a
    trainer is chosen); sessions already on the calendar keep their stored interval,
    so nothing booked moves or starts to overlap."""
    course = session.scalar(
        select(Course)
        .where(Course.id == course_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if course is None:
        raise NotFound("unknown_course", "No course has this id.", id=course_id)
    if title is not None:
        course.title = title
    if session_minutes is not None:
        course.session_minutes = session_minutes
    current = {price.tier: price for price in course.prices}
    for tier, cents in sorted((prices or {}).items()):
        if tier in current:
            current[tier].amount_cents = cents
        else:
            course.prices.append(CoursePrice(tier=tier, amount_cents=cents))
    session.flush()
    return course


WeekHours = Mapping[int, tuple[time, time]]  # weekday (0 = Monday) → (start, end)


def create_trainer(
    session: Session,
    *,
    name: str,
    email: str,
    max_students: int,
    course_ids: Sequence[int],
    is_active: bool = True,
    timezone: str = "UTC",
    working_hours: WeekHours | None = None,
) -> Trainer:
    """A trainer; without `working_hours`, Monday to Friday 08:00 to 20:00 in `timezone`."""
    if _email_taken(session, Trainer, email):
        raise Conflict("email_taken", "A trainer with this email exists.", field="email")
    wanted = set(course_ids)
    known = set(session.scalars(select(Course.id).where(Course.id.in_(wanted))))
    if missing := sorted(wanted - known):
        raise NotFound("unknown_course", "Some courses do not exist.", course_ids=missing)
    trainer = Trainer(
        name=name,
        email=email,
        max_students=max_students,
        is_active=is_active,
        timezone=timezone,
    )
    session.add(trainer)
    session.flush()
    session.add_all(TrainerCourse(trainer_id=trainer.id, course_id=c) for c in sorted(wanted))
    session.add_all(_working_days(trainer.id, working_hours or DEFAULT_WORKING_DAYS))
    session.flush()
    if is_active:  # students waiting for a trainer of these courses try again
        wake_waiting(session, sorted(wanted), limit=WAKE_LIMIT)
    return trainer


# Waiting allocations one trainer change asks to try again (beat asks for the rest).
WAKE_LIMIT = 100


def _working_days(trainer_id: int, hours: WeekHours) -> list[WorkingDay]:
    return [
        WorkingDay(trainer_id=trainer_id, weekday=weekday, starts=starts, ends=ends)
        for weekday, (starts, ends) in sorted(hours.items())
    ]


def hours_for_all_trainers(
    starts: time = time(0), ends: time = END_OF_DAY, weekdays: Sequence[int] = range(7)
) -> Insert:
    """Working hours (by default: around the clock, every day) for every trainer that
    has none, as one INSERT … SELECT: for seeds (bench, soak) that make trainers in SQL."""
    week = (
        func.unnest(literal(list(weekdays), ARRAY(SmallInteger())))
        .table_valued("weekday")
        .render_derived(name="week")
    )
    has_hours = select(WorkingDay.trainer_id).where(WorkingDay.trainer_id == Trainer.id).exists()
    return insert(WorkingDay).from_select(
        ["trainer_id", "weekday", "starts", "ends"],
        select(Trainer.id, week.c.weekday, literal(starts, Time()), literal(ends, Time()))
        .select_from(Trainer)
        .join(week, true())
        .where(~has_hours),
    )


@dataclass(frozen=True)
class TrainerChange:
    trainer: Trainer
    # Allocations the change took from the trainer: each gets a reallocation chain.
    reallocating: list[int]


def update_trainer(
    session: Session,
    trainer_id: int,
    *,
    now: datetime,
    max_students: int | None = None,
    active: bool | None = None,
    timezone: str | None = None,
    working_hours: WeekHours | None = None,
) -> TrainerChange:
    """Change a trainer's capacity, hours, time zone or activity. Allocations the
    trainer can no longer serve (all of them when deactivated; those with a session or
    a coming session outside new hours) are handed to the reallocation chain through
    the outbox, in this transaction."""
    trainer = session.scalar(
        select(Trainer)
        .where(Trainer.id == trainer_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if trainer is None:
        raise NotFound("trainer_not_found", "No trainer has this id.", id=trainer_id)
    if max_students is not None:
        if max_students < trainer.active_students:
            raise Conflict(
                "capacity_below_load",
                f"The trainer has {trainer.active_students} students; capacity cannot go "
                "below that.",
                active_students=trainer.active_students,
            )
        trainer.max_students = max_students
    if timezone is not None:
        trainer.timezone = timezone
    if working_hours is not None:
        session.execute(delete(WorkingDay).where(WorkingDay.trainer_id == trainer_id))
        session.add_all(_working_days(trainer_id, working_hours))
    if active is not None:
        trainer.is_active = active
    session.flush()
    if not trainer.is_active:
        moving = holding_allocations(session, trainer_id)
    elif timezone is not None or working_hours is not None:
        moving = allocations_outside_hours(session, trainer_id, now=now)
    else:
        moving = []
    for allocation_id, payment_id, student_id in moving:
        request_reallocation(
            session,
            allocation_id=allocation_id,
            payment_id=payment_id,
            student_id=student_id,
            reason="trainer_inactive" if not trainer.is_active else "outside_working_hours",
        )
    if trainer.is_active:  # reactivated, more room or other hours: the waiting try again
        taught = session.scalars(
            select(TrainerCourse.course_id).where(TrainerCourse.trainer_id == trainer_id)
        ).all()
        wake_waiting(session, list(taught), limit=WAKE_LIMIT)
    return TrainerChange(trainer, [row[0] for row in moving])
