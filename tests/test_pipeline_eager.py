"""The chain's logic, run eagerly in-process (delivery semantics: tests/test_worker_*)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time

import pytest
from sqlalchemy import func, select

from domain import fulfilment
from domain.clock import utcnow
from domain.errors import NoTrainerAvailable, PermanentStepError, StepCancelled
from models import (
    Allocation,
    DeadLetter,
    DomainEvent,
    Payment,
    PaymentStatus,
    ProcessedEvent,
    Purchase,
    SessionStatus,
    Trainer,
    TutoringSession,
)
from tasks.chains import fulfilment_chain
from tasks.pipeline import allocate_trainer, create_purchase, schedule_sessions
from tests.conftest import celery_app
from tests.factories import make_course, make_payment, make_student, make_trainer

MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def confirmed(db_session):
    student, course = make_student(db_session), make_course(db_session)
    trainer = make_trainer(db_session, [course], max_students=2)
    payment = make_payment(db_session, student, course, confirmed=True)
    db_session.flush()
    return payment, trainer


def test_whole_chain_creates_purchase_allocation_and_seven_sessions(db_session, eager, confirmed):
    payment, trainer = confirmed
    fulfilment_chain(celery_app, str(payment.id)).apply_async()

    purchase = db_session.scalars(select(Purchase)).one()
    allocation = db_session.scalars(select(Allocation)).one()
    assert purchase.payment_id == payment.id
    assert allocation.trainer_id == trainer.id
    assert allocation.status == "active"
    assert count(db_session, TutoringSession) == 7
    db_session.refresh(trainer)
    assert trainer.active_students == 1
    events = db_session.scalars(select(DomainEvent.event_type).order_by(DomainEvent.id)).all()
    assert events[1:] == ["PURCHASE_CREATED", "TRAINER_ALLOCATED", "SESSIONS_GENERATED"]


def test_a_redelivered_step_returns_its_stored_result_and_does_nothing(
    db_session, eager, confirmed
):
    payment, trainer = confirmed
    pid = str(payment.id)
    purchase_id = create_purchase.apply(args=(pid,), kwargs={"correlation_id": pid}).get()
    again = create_purchase.apply(args=(pid,), kwargs={"correlation_id": pid}).get()
    assert again == purchase_id

    allocation_id = allocate_trainer.apply(
        args=(purchase_id,), kwargs={"correlation_id": pid}
    ).get()
    assert allocate_trainer.apply(args=(purchase_id,), kwargs={"correlation_id": pid}).get() == (
        allocation_id
    )
    student_id = schedule_sessions.apply(args=(allocation_id,), kwargs={"correlation_id": pid})
    assert (
        schedule_sessions.apply(args=(allocation_id,), kwargs={"correlation_id": pid}).get()
        == student_id.get()
    )

    assert count(db_session, Purchase) == 1
    assert count(db_session, Allocation) == 1
    assert count(db_session, TutoringSession) == 7
    assert count(db_session, ProcessedEvent) == 3
    db_session.refresh(trainer)
    assert trainer.active_students == 1  # the counter was not bumped twice
    stored = db_session.scalars(
        select(ProcessedEvent.result).where(ProcessedEvent.consumer.like("%create_purchase"))
    ).one()
    assert stored == purchase_id


def test_a_redelivered_step_whose_rerun_would_write_returns_the_stored_result_and_writes_nothing(
    db_session, eager, confirmed
):
    """The inbox row goes in last: a duplicate runs its effect on the state the first
    run left, and it is rolled back when the row is found there."""
    payment, _ = confirmed
    pid = str(payment.id)
    purchase_id = create_purchase.apply(args=(pid,), kwargs={"correlation_id": pid}).get()
    allocation_id = allocate_trainer.apply(
        args=(purchase_id,), kwargs={"correlation_id": pid}
    ).get()
    student_id = schedule_sessions.apply(
        args=(allocation_id,), kwargs={"correlation_id": pid}
    ).get()
    cancelled = db_session.scalars(select(TutoringSession).limit(1)).one()
    cancelled.status = SessionStatus.CANCELLED  # the window now has room for one more
    db_session.flush()

    again = schedule_sessions.apply(args=(allocation_id,), kwargs={"correlation_id": pid}).get()

    assert again == student_id
    assert count(db_session, TutoringSession) == 7
    generated = select(func.count()).where(DomainEvent.event_type == "SESSIONS_GENERATED")
    assert db_session.scalar(generated) == 1
    # What the redelivery's effect wrote before it found the row: a rerun writes one.
    assert len(fulfilment.schedule_sessions(db_session, allocation_id, now=utcnow(), window=7)) == 1


def test_a_redelivered_step_whose_rerun_fails_returns_the_stored_result(
    db_session, eager, confirmed
):
    payment, _ = confirmed
    pid = str(payment.id)
    purchase_id = create_purchase.apply(args=(pid,), kwargs={"correlation_id": pid}).get()
    payment.status = PaymentStatus.REFUNDED  # after the purchase: its effect now refuses
    db_session.flush()

    again = create_purchase.apply(args=(pid,), kwargs={"correlation_id": pid}).get()

    assert again == purchase_id
    assert count(db_session, Purchase) == 1
    with pytest.raises(StepCancelled):  # what the redelivery's effect raised
        fulfilment.create_purchase(db_session, payment.id)


def test_domain_steps_are_idempotent_even_without_the_inbox(db_session, confirmed):
    payment, _ = confirmed
    first = fulfilment.create_purchase(db_session, payment.id)
    assert fulfilment.create_purchase(db_session, payment.id).id == first.id
    allocation = fulfilment.allocate_trainer(db_session, first.id)
    assert fulfilment.allocate_trainer(db_session, first.id).id == allocation.id
    made = fulfilment.schedule_sessions(db_session, allocation.id, now=MONDAY_NOON, window=7)
    assert len(made) == 7
    assert fulfilment.schedule_sessions(db_session, allocation.id, now=MONDAY_NOON, window=7) == []


def test_no_free_trainer_is_a_transient_error(db_session):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course], is_active=False)
    payment = make_payment(db_session, student, course, confirmed=True)
    purchase = fulfilment.create_purchase(db_session, payment.id)
    with pytest.raises(NoTrainerAvailable):
        fulfilment.allocate_trainer(db_session, purchase.id)


def test_a_trainer_is_never_given_two_students_at_one_slot(db_session):
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course], max_students=5)
    first = make_payment(db_session, make_student(db_session), course, confirmed=True)
    second = make_payment(db_session, make_student(db_session), course, confirmed=True)
    fulfilment.allocate_trainer(db_session, fulfilment.create_purchase(db_session, first.id).id)
    with pytest.raises(NoTrainerAvailable):
        fulfilment.allocate_trainer(
            db_session, fulfilment.create_purchase(db_session, second.id).id
        )
    other_slot = make_payment(
        db_session, make_student(db_session), course, slot=time(9, 0), confirmed=True
    )
    allocation = fulfilment.allocate_trainer(
        db_session, fulfilment.create_purchase(db_session, other_slot.id).id
    )
    assert allocation.trainer_id == trainer.id


def test_least_loaded_trainer_gets_the_student(db_session):
    course = make_course(db_session)
    busy = make_trainer(db_session, [course])
    idle = make_trainer(db_session, [course])
    busy.active_students = 2
    db_session.flush()
    payment = make_payment(db_session, make_student(db_session), course, confirmed=True)
    allocation = fulfilment.allocate_trainer(
        db_session, fulfilment.create_purchase(db_session, payment.id).id
    )
    assert allocation.trainer_id == idle.id


def test_second_active_purchase_of_a_course_is_permanent(db_session, confirmed):
    payment, _ = confirmed
    fulfilment.create_purchase(db_session, payment.id)
    # A second payment for the same course slipped past checkout (it raced the first).
    second = Payment(
        student_id=payment.student_id,
        course_id=payment.course_id,
        tier=10,
        time_slot=time(9, 0),
        amount_cents=100,
        currency="EUR",
        status=PaymentStatus.SUCCEEDED,
        provider_payment_id="pp_other",
    )
    db_session.add(second)
    db_session.flush()
    with pytest.raises(PermanentStepError, match="already has course"):
        fulfilment.create_purchase(db_session, second.id)


def test_a_permanent_failure_is_dead_lettered_at_once_without_retries(db_session, eager):
    missing = str(uuid.uuid4())
    result = create_purchase.apply(args=(missing,), kwargs={"correlation_id": missing}, throw=False)
    assert result.failed()
    letter = db_session.scalars(select(DeadLetter)).one()
    assert letter.task_name == "tutorflow.pipeline.create_purchase"
    assert letter.retries == 0
    assert letter.exception_type == "domain.errors.PermanentStepError"
    assert letter.correlation_id == missing
    assert letter.status == "open"


def test_a_ten_session_tier_never_gets_an_eleventh(db_session, clock):
    student, course = make_student(db_session, timezone="UTC"), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, tier=10, slot=time(9, 0), confirmed=True)
    allocation = fulfilment.allocate_trainer(
        db_session, fulfilment.create_purchase(db_session, payment.id).id
    )
    assert (
        len(fulfilment.schedule_sessions(db_session, allocation.id, now=MONDAY_NOON, window=7)) == 7
    )
    # Two weeks later every scheduled session is past: the tier allows only 3 more.
    later = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert len(fulfilment.schedule_sessions(db_session, allocation.id, now=later, window=7)) == 3
    much_later = datetime(2027, 1, 4, 12, 0, tzinfo=UTC)
    assert fulfilment.schedule_sessions(db_session, allocation.id, now=much_later, window=7) == []
    sessions = db_session.scalars(select(TutoringSession)).all()
    assert len(sessions) == 10
    assert all(s.scheduled_date.weekday() < 5 for s in sessions)
    assert len({s.scheduled_date for s in sessions}) == 10


def test_trainer_counter_and_capacity_check_hold_in_the_database(db_session):
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course], max_students=1)
    trainer.active_students = 2
    with pytest.raises(Exception, match="ck_trainers_within_capacity"):
        db_session.flush()
    db_session.rollback()
    assert count(db_session, Trainer) == 0


def test_a_purchase_is_made_once_and_only_for_a_payment_still_paid_for(db_session):
    """create_purchase: a verified payment gets one purchase, however often asked; a
    payment not verified yet is refused for good, a refunded one cancels the step; a
    second payment for a course already active is refused; none of those writes."""
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    unverified = make_payment(db_session, student, course)
    with pytest.raises(PermanentStepError, match="not succeeded"):
        fulfilment.create_purchase(db_session, unverified.id)
    assert count(db_session, Purchase) == 0

    paid = make_payment(db_session, student, course, confirmed=True)
    # Checked out before the first was fulfilled (a checkout after it is refused).
    again = make_payment(db_session, student, course, slot=time(9, 0), confirmed=True)
    first = fulfilment.create_purchase(db_session, paid.id)
    assert fulfilment.create_purchase(db_session, paid.id).id == first.id
    assert count(db_session, Purchase) == 1
    made = select(func.count()).where(
        DomainEvent.correlation_id == paid.id, DomainEvent.event_type == "PURCHASE_CREATED"
    )
    assert db_session.scalar(made) == 1

    with pytest.raises(PermanentStepError, match="already has course"):
        fulfilment.create_purchase(db_session, again.id)
    refunded = make_payment(db_session, make_student(db_session), course, confirmed=True)
    refunded.status = PaymentStatus.REFUNDED
    db_session.flush()
    with pytest.raises(StepCancelled):
        fulfilment.create_purchase(db_session, refunded.id)
    assert count(db_session, Purchase) == 1
