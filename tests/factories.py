"""Test data builders: they flush (ids are assigned), never commit."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from datetime import datetime, time
from typing import Any

import stripe
from sqlalchemy.orm import Session

from bootstrap import bootstrap
from core.provider import PaymentProvider
from domain import catalogue
from domain.calendar import END_OF_DAY
from domain.clock import utcnow
from domain.events import EventType, record_event
from domain.payments import Order, Price, start_checkout
from models import Allocation, Course, Payment, PaymentStatus, Student, Trainer

_seq = itertools.count(1)


def make_student(session: Session, timezone: str = "Europe/Berlin") -> Student:
    n = next(_seq)
    return catalogue.create_student(
        session, name=f"Student {n}", email=f"student{n}@test.example", timezone=timezone
    )


def make_course(session: Session, title: str = "Algebra", session_minutes: int = 60) -> Course:
    return catalogue.create_course(session, title=title, session_minutes=session_minutes)


# Test trainers work every day around the clock unless a test says otherwise: tests
# about something else need not care whose hours a slot falls in.
ALWAYS = {weekday: (time(0, 0), END_OF_DAY) for weekday in range(7)}


def make_trainer(
    session: Session,
    courses: list[Course],
    max_students: int = 10,
    is_active: bool = True,
    *,
    timezone: str = "UTC",
    working_hours: Mapping[int, tuple[time, time]] = ALWAYS,
) -> Trainer:
    n = next(_seq)
    return catalogue.create_trainer(
        session,
        name=f"Trainer {n}",
        email=f"trainer{n}@test.example",
        max_students=max_students,
        course_ids=[c.id for c in courses],
        is_active=is_active,
        timezone=timezone,
        working_hours=working_hours,
    )


def make_sellable_course(session: Session, title: str = "Algebra", trainers: int = 1) -> Course:
    """A course a checkout can buy at any time: `trainers` trainers who teach it and
    work around the clock (a checkout is refused for a time no trainer can serve)."""
    course = make_course(session, title=title)
    for _ in range(trainers):
        make_trainer(session, [course])
    return course


def provider() -> PaymentProvider:
    """The test run's provider: the sandbox (tests/conftest.py)."""
    from tests.conftest import settings

    return bootstrap(settings).provider


def pay(intent_id: str, payment_method: str = "pm_card_visa") -> None:
    """The student pays at the provider, as the provider's SDK would in the app."""
    try:
        provider().client.v1.payment_intents.confirm(
            intent_id, params={"payment_method": payment_method}
        )
    except stripe.CardError:
        if payment_method == "pm_card_visa":
            raise


def make_payment(
    session: Session,
    student: Student,
    course: Course,
    *,
    tier: int = 10,
    slot: time = time(17, 30),
    paid: bool = True,
    confirmed: bool = False,
    via: PaymentProvider | None = None,
) -> Payment:
    """A pending payment with a real PaymentIntent in the sandbox. `paid` (the default):
    the student paid at the provider (the payment is still pending here); pass False for
    a student who has not. `confirmed`: paid and
    verified, as if the chain's verify step had run (no outbox row: nothing starts)."""
    payment_id = uuid.uuid4()
    price = catalogue_price(session, course, tier)
    at = via or provider()
    intent = at.create_intent(
        amount_cents=price, currency=course.currency, payment_id=str(payment_id)
    )
    payment = start_checkout(
        session,
        Order(student_id=student.id, course_id=course.id, tier=tier, time_slot=slot),
        payment_id=payment_id,
        provider_payment_id=intent.id,
        price=Price(price, course.currency),
    )
    if paid or confirmed:
        at.client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    if confirmed:
        payment.status = PaymentStatus.SUCCEEDED
        payment.confirmed_at = utcnow()
        record_event(
            session,
            correlation_id=payment.id,
            student_id=student.id,
            event_type=EventType.PAYMENT_VERIFIED,
            payload={"source": "test"},
        )
        session.flush()
    return payment


def catalogue_price(session: Session, course: Course, tier: int) -> int:
    return next(p.amount_cents for p in course.prices if p.tier == tier)


def payment_body(student_id: int, course_id: int, **overrides: object) -> dict[str, object]:
    return {
        "student_id": student_id,
        "course_id": course_id,
        "tier": 10,
        "time_slot": "17:30",
        **overrides,
    }


def make_dead_letter(session: Session, *, status: str = "open", **overrides: Any):
    """A parked create_purchase failure, as `tasks.dead_letters.park` records it:
    `overrides` are `DeadLetterRecord` fields (the redelivery runs the letter's step
    again, for its payment, unless given), then the letter is given `status`."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from domain.dead_letters import DeadLetterRecord, store_dead_letter
    from models import FailureKind
    from tasks.redelivery import Redelivery

    n = next(_seq)
    now = datetime.now(UTC)
    step = overrides.pop("step", "tutorflow.pipeline.create_purchase")
    payment_id = overrides.pop("correlation_id", f"00000000-0000-4000-8000-{n:012d}")
    record = DeadLetterRecord(
        run_id=f"task-{n}",
        step=step,
        correlation_id=payment_id,
        kind=FailureKind.NEEDS_OPERATOR,
        exception_type="domain.errors.PermanentStepError",
        exception_message="payment does not exist",
        traceback="Traceback ...",
        retries=0,
        first_failed_at=now,
        last_failed_at=now,
        redelivery=Redelivery(
            task_name=step, args=[payment_id], kwargs={"correlation_id": payment_id}
        ).to_json(),
    )
    letter = store_dead_letter(session, replace(record, **overrides))
    letter.status = status
    session.flush()
    return letter


def make_allocation(
    session: Session,
    course: Course,
    *,
    slot: time,
    now: datetime,
    timezone: str = "UTC",
    tier: int = 20,
) -> Allocation:
    """A new student on `course`, paid and verified, allocated by the domain's own rule
    (among the course's trainers) with the first 7 sessions after `now`."""
    from domain import fulfilment

    payment = make_payment(
        session,
        make_student(session, timezone=timezone),
        course,
        tier=tier,
        slot=slot,
        confirmed=True,
    )
    purchase = fulfilment.create_purchase(session, payment.id)
    allocation = fulfilment.allocate_trainer(session, purchase.id, now=now)
    fulfilment.schedule_sessions(session, allocation.id, now=now, window=7)
    return allocation
