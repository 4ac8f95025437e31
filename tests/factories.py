"""Test data builders: they flush (ids are assigned), never commit."""

from __future__ import annotations

import itertools
from datetime import time

from sqlalchemy.orm import Session

from domain import catalogue
from domain.payments import Checkout, confirm_payment, start_checkout
from models import Course, Payment, Student, Trainer

_seq = itertools.count(1)


def make_student(session: Session, timezone: str = "Europe/Berlin") -> Student:
    n = next(_seq)
    return catalogue.create_student(
        session, name=f"Student {n}", email=f"student{n}@test.example", timezone=timezone
    )


def make_course(session: Session, title: str = "Algebra") -> Course:
    return catalogue.create_course(session, title=title)


def make_trainer(
    session: Session, courses: list[Course], max_students: int = 10, is_active: bool = True
) -> Trainer:
    n = next(_seq)
    return catalogue.create_trainer(
        session,
        name=f"Trainer {n}",
        email=f"trainer{n}@test.example",
        max_students=max_students,
        course_ids=[c.id for c in courses],
        is_active=is_active,
    )


def make_payment(
    session: Session,
    student: Student,
    course: Course,
    *,
    tier: int = 10,
    slot: time = time(17, 30),
    confirmed: bool = False,
) -> Payment:
    payment = start_checkout(
        session,
        Checkout(
            student_id=student.id,
            course_id=course.id,
            tier=tier,
            time_slot=slot,
            amount_cents=9900,
            currency="EUR",
        ),
    )
    if confirmed:
        confirm_payment(session, payment.id, f"pp_{payment.id.hex}", source="test")
    return payment


def payment_body(student_id: int, course_id: int, **overrides: object) -> dict[str, object]:
    return {
        "student_id": student_id,
        "course_id": course_id,
        "tier": 10,
        "time_slot": "17:30",
        "amount_cents": 9900,
        "currency": "EUR",
        **overrides,
    }


def make_dead_letter(session: Session, **overrides: object):
    """A parked create_purchase failure (what `tasks.dead_letters.park` records)."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from domain.dead_letters import store_dead_letter
    from models import DeadLetter

    n = next(_seq)
    now = datetime.now(UTC).isoformat()
    letter = {
        "task_name": "tutorflow.pipeline.create_purchase",
        "exception_type": "domain.errors.PermanentStepError",
        "exception_message": "payment does not exist",
        "correlation_id": f"00000000-0000-4000-8000-{n:012d}",
        "task_id": f"task-{n}",
        "args": [f"00000000-0000-4000-8000-{n:012d}"],
        "kwargs": {"correlation_id": f"00000000-0000-4000-8000-{n:012d}"},
        "chain": [],
        "traceback": "Traceback ...",
        "retries": 0,
        "first_failed_at": now,
        "last_failed_at": now,
        **overrides,
    }
    store_dead_letter(session, letter)
    session.flush()
    return session.scalars(select(DeadLetter).where(DeadLetter.task_id == letter["task_id"])).one()
