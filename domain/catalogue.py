"""Catalogue writes: students, courses, trainers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from domain.errors import Conflict, NotFound
from models import Course, CoursePrice, Student, Trainer, TrainerCourse


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
    prices: Mapping[int, int] | None = None,
) -> Course:
    """A course with a price (in cents of `currency`) for each tier: `prices` overrides
    the defaults tier by tier."""
    course = Course(title=title, currency=currency)
    chosen = {**DEFAULT_PRICES, **(prices or {})}
    course.prices = [CoursePrice(tier=tier, amount_cents=chosen[tier]) for tier in sorted(chosen)]
    session.add(course)
    session.flush()
    return course


def create_trainer(
    session: Session,
    *,
    name: str,
    email: str,
    max_students: int,
    course_ids: Sequence[int],
    is_active: bool = True,
) -> Trainer:
    if _email_taken(session, Trainer, email):
        raise Conflict("email_taken", "A trainer with this email exists.", field="email")
    wanted = set(course_ids)
    known = set(session.scalars(select(Course.id).where(Course.id.in_(wanted))))
    if missing := sorted(wanted - known):
        raise NotFound("unknown_course", "Some courses do not exist.", course_ids=missing)
    trainer = Trainer(name=name, email=email, max_students=max_students, is_active=is_active)
    session.add(trainer)
    session.flush()
    session.add_all(TrainerCourse(trainer_id=trainer.id, course_id=c) for c in sorted(wanted))
    session.flush()
    return trainer
