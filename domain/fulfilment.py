"""The pipeline's effects: purchase, trainer allocation, session scheduling.

Each function runs inside the caller's transaction (a task's, opened by the base
task), writes its event with its change, and is idempotent on its own: called twice
for the same input, it returns what the first call created.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import String, and_, cast, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.allocation import TrainerLoad, rank_trainers
from domain.calendar import Shift, plan_window, sessions_needed
from domain.errors import NoTrainerAvailable, PermanentStepError, StepCancelled
from domain.events import EventType, record_event
from models import (
    HOLDING_STATUSES,
    Allocation,
    AllocationStatus,
    DeadLetter,
    DeadLetterStatus,
    DomainEvent,
    OutboxKind,
    OutboxMessage,
    Payment,
    PaymentStatus,
    Purchase,
    SessionStatus,
    Student,
    Trainer,
    TrainerCourse,
    TutoringSession,
)


def lock_live_payment(session: Session, payment_id: uuid.UUID) -> Payment:
    """Share-lock the payment and insist it is still paid for.

    Every forward step calls this first, and a refund updates the same row: so either
    the step sees the refund and stops, or it commits before the refund does and the
    compensation (which runs after the refund's commit) undoes what it made.
    """
    payment = session.scalar(
        select(Payment)
        .where(Payment.id == payment_id)
        .with_for_update(read=True)
        .execution_options(populate_existing=True)  # a locking read must see the row as it is
    )
    if payment is None:
        raise PermanentStepError(f"payment {payment_id} does not exist")
    if payment.status == PaymentStatus.REFUNDED:
        raise StepCancelled(f"payment {payment_id} was refunded")
    if payment.status != PaymentStatus.SUCCEEDED:
        raise PermanentStepError(f"payment {payment_id} is {payment.status}, not succeeded")
    return payment


def create_purchase(session: Session, payment_id: uuid.UUID) -> Purchase:
    payment = lock_live_payment(session, payment_id)
    # ON CONFLICT covers both a purchase already made for this payment (redelivery)
    # and another active purchase of the same course (told apart just below).
    purchase_id = session.scalar(
        pg_insert(Purchase)
        .values(
            payment_id=payment.id,
            student_id=payment.student_id,
            course_id=payment.course_id,
            tier=payment.tier,
            time_slot=payment.time_slot,
        )
        .on_conflict_do_nothing()
        .returning(Purchase.id)
    )
    if purchase_id is None:
        existing = session.scalar(select(Purchase).where(Purchase.payment_id == payment.id))
        if existing is not None:
            return existing
        raise PermanentStepError(
            f"student {payment.student_id} already has course {payment.course_id} active "
            "through another payment"
        )
    record_event(
        session,
        correlation_id=payment.id,
        student_id=payment.student_id,
        event_type=EventType.PURCHASE_CREATED,
        payload={"purchase_id": purchase_id},
    )
    return session.get_one(Purchase, purchase_id)


def _trainer_loads(session: Session, purchase: Purchase, trainer_id: int | None = None):
    slot_taken = exists().where(
        Allocation.trainer_id == Trainer.id,
        Allocation.time_slot == purchase.time_slot,
        Allocation.status.in_(HOLDING_STATUSES),
    )
    teaches = exists().where(
        TrainerCourse.trainer_id == Trainer.id, TrainerCourse.course_id == purchase.course_id
    )
    query = select(
        Trainer.id,
        Trainer.is_active,
        teaches.label("teaches"),
        Trainer.active_students,
        Trainer.max_students,
        slot_taken.label("slot_taken"),
    )
    if trainer_id is None:
        query = query.where(teaches, Trainer.is_active)
    else:
        query = query.where(Trainer.id == trainer_id)
    return [TrainerLoad(*row) for row in session.execute(query)]


def allocate_trainer(session: Session, purchase_id: int) -> Allocation:
    """Give the purchase the least-loaded trainer who can take it.

    Each candidate is locked (FOR UPDATE) inside a savepoint and re-checked with a
    fresh statement, so every allocation of one trainer is serialized and sees the
    ones committed before it; an unsuitable trainer's lock is released at once by
    rolling the savepoint back, so a transaction waits on one trainer at a time and
    cannot deadlock. The CHECK on `active_students` and the partial unique index on
    (trainer, slot) back this up in the database.
    """
    purchase = session.get(Purchase, purchase_id)
    if purchase is None:
        raise PermanentStepError(f"purchase {purchase_id} does not exist")
    lock_live_payment(session, purchase.payment_id)
    existing = session.scalar(select(Allocation).where(Allocation.purchase_id == purchase_id))
    if existing is not None:
        return existing
    if not purchase.is_active:
        raise PermanentStepError(f"purchase {purchase_id} is no longer active")

    for candidate in rank_trainers(_trainer_loads(session, purchase)):
        savepoint = session.begin_nested()
        session.execute(
            select(Trainer.id).where(Trainer.id == candidate.trainer_id).with_for_update()
        )
        [locked] = _trainer_loads(session, purchase, trainer_id=candidate.trainer_id)
        if not locked.eligible:
            savepoint.rollback()
            continue
        session.execute(
            update(Trainer)
            .where(Trainer.id == locked.trainer_id)
            .values(active_students=Trainer.active_students + 1)
        )
        allocation = Allocation(
            purchase_id=purchase.id,
            student_id=purchase.student_id,
            course_id=purchase.course_id,
            trainer_id=locked.trainer_id,
            time_slot=purchase.time_slot,
            sessions_total=purchase.tier,
            status=AllocationStatus.APPROVED,
        )
        session.add(allocation)
        session.flush()
        savepoint.commit()
        record_event(
            session,
            correlation_id=purchase.payment_id,
            student_id=purchase.student_id,
            event_type=EventType.TRAINER_ALLOCATED,
            payload={"allocation_id": allocation.id, "trainer_id": locked.trainer_id},
        )
        return allocation
    raise NoTrainerAvailable(
        f"no trainer free for course {purchase.course_id} at {purchase.time_slot:%H:%M}"
    )


def schedule_sessions(
    session: Session, allocation_id: int, *, now: datetime, window: int
) -> list[TutoringSession]:
    """Top the allocation up to `window` future sessions, within its tier.

    The allocation row is locked, so two schedulers of one allocation (the chain and
    a beat top-up) run one after the other; the unique slot per allocation backs it.
    Returns the sessions this call created (none when the window is already full).
    """
    payment_id = session.scalar(
        select(Purchase.payment_id)
        .join(Allocation, Allocation.purchase_id == Purchase.id)
        .where(Allocation.id == allocation_id)
    )
    if payment_id is None:
        raise PermanentStepError(f"allocation {allocation_id} does not exist")
    lock_live_payment(session, payment_id)  # payment first: the order a refund locks in
    allocation = session.execute(
        select(Allocation)
        .where(Allocation.id == allocation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()
    if allocation.status not in HOLDING_STATUSES:
        return []
    timezone = session.get_one(Student, allocation.student_id).timezone
    not_cancelled = TutoringSession.status != SessionStatus.CANCELLED
    used, future, last_date = session.execute(
        select(
            func.count().filter(not_cancelled),
            func.count().filter(
                and_(
                    TutoringSession.status == SessionStatus.SCHEDULED,
                    TutoringSession.starts_at > now,
                )
            ),
            func.max(TutoringSession.scheduled_date),
        ).where(TutoringSession.allocation_id == allocation.id)
    ).one()
    needed = sessions_needed(
        future=future, used=used, total=allocation.sessions_total, window=window
    )
    # The trainer's row is locked first: every writer of a trainer's sessions (this
    # step, the beat top-up) does so, so the busy instants read next stay true until
    # commit, and the plan never meets a clash it did not see.
    busy = busy_instants(session, [allocation.trainer_id], now=now)[allocation.trainer_id]
    plan = plan_window(
        now=now,
        timezone=timezone,
        slot=allocation.time_slot,
        count=needed,
        last_scheduled=last_date,
        busy=busy,
    )
    rows = [
        {
            "allocation_id": allocation.id,
            "student_id": allocation.student_id,
            "trainer_id": allocation.trainer_id,
            "scheduled_date": p.scheduled_date,
            "scheduled_time": p.scheduled_time,
            "starts_at": p.starts_at,
        }
        for p in plan.sessions
    ]
    created: list[TutoringSession] = (
        list(session.scalars(pg_insert(TutoringSession).values(rows).returning(TutoringSession)))
        if rows
        else []
    )
    for shift in plan.shifts:
        record_event(
            session,
            correlation_id=payment_id,
            student_id=allocation.student_id,
            event_type=EventType.SESSION_SHIFTED,
            payload=shift_payload(allocation.id, shift),
        )
    if allocation.status == AllocationStatus.APPROVED:
        allocation.status = AllocationStatus.ACTIVE
    if created:
        record_event(
            session,
            correlation_id=payment_id,
            student_id=allocation.student_id,
            event_type=EventType.SESSIONS_GENERATED,
            payload={
                "allocation_id": allocation.id,
                "count": len(created),
                "dates": [s.scheduled_date.isoformat() for s in created],
            },
        )
    return created


def busy_instants(
    session: Session, trainer_ids: list[int], *, now: datetime
) -> dict[int, set[datetime]]:
    """Lock the trainers (in id order: concurrent writers cannot deadlock) and return the
    start of each one's future scheduled sessions."""
    ordered = sorted(set(trainer_ids))
    session.execute(
        select(Trainer.id).where(Trainer.id.in_(ordered)).order_by(Trainer.id).with_for_update()
    )
    busy: dict[int, set[datetime]] = {trainer_id: set() for trainer_id in ordered}
    rows = session.execute(
        select(TutoringSession.trainer_id, TutoringSession.starts_at).where(
            TutoringSession.trainer_id.in_(ordered),
            TutoringSession.status == SessionStatus.SCHEDULED,
            TutoringSession.starts_at > now,
        )
    )
    for trainer_id, starts_at in rows:
        busy[trainer_id].add(starts_at)
    return busy


def shift_payload(allocation_id: int, shift: Shift) -> dict[str, object]:
    return {
        "allocation_id": allocation_id,
        "wanted": shift.wanted.isoformat(),
        "got": shift.got.isoformat(),
        "reason": shift.reason,
    }


def stalled_payments(session: Session, *, now: datetime, stall: timedelta, limit: int) -> list:
    """Confirmed payments whose chain has not reached its schedule after `stall`, with no
    open dead letter (an operator owns those) and not resumed within `stall` either."""
    resumed_recently = (
        select(DomainEvent.id)
        .where(
            DomainEvent.correlation_id == Payment.id,
            DomainEvent.event_type == EventType.PIPELINE_RESUMED,
            DomainEvent.occurred_at > now - stall,
        )
        .exists()
    )
    parked = (
        select(DeadLetter.id)
        .where(
            DeadLetter.correlation_id == cast(Payment.id, String),
            DeadLetter.status == DeadLetterStatus.OPEN,
        )
        .exists()
    )
    return list(
        session.execute(
            select(Payment.id, Payment.student_id)
            .outerjoin(Purchase, Purchase.payment_id == Payment.id)
            .outerjoin(Allocation, Allocation.purchase_id == Purchase.id)
            .where(
                # Confirming too: a verify step lost with the broker is asked again.
                Payment.status.in_([PaymentStatus.SUCCEEDED, PaymentStatus.CONFIRMING]),
                Payment.confirmed_at < now - stall,
                or_(
                    Purchase.id.is_(None),
                    Allocation.id.is_(None),
                    Allocation.status == AllocationStatus.APPROVED,
                ),
                ~parked,
                ~resumed_recently,
            )
            .order_by(Payment.confirmed_at)
            .limit(limit)
        )
    )


def mark_resumed(session: Session, payment_id: uuid.UUID, student_id: int) -> None:
    """Its event, and the outbox message that publishes the chain again after commit."""
    record_event(
        session,
        correlation_id=payment_id,
        student_id=student_id,
        event_type=EventType.PIPELINE_RESUMED,
    )
    session.add(
        OutboxMessage(
            correlation_id=payment_id,
            kind=OutboxKind.START_PIPELINE,
            payload={"payment_id": str(payment_id)},
        )
    )
