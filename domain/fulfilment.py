"""The pipeline's effects: purchase, trainer allocation, session scheduling.

Each function runs inside the caller's transaction (a task's, opened by the base
task), writes its event with its change, and is idempotent on its own: called twice
for the same input, it returns what the first call created.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    DateTime,
    Select,
    String,
    and_,
    bindparam,
    cast,
    func,
    insert,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from domain import notifications
from domain.availability import Wanted, claim_trainer, find_trainer
from domain.bookings import trainer_calendars
from domain.calendar import (
    PlannedSession,
    Shift,
    plan_window,
    sessions_needed,
)
from domain.clock import utcnow
from domain.errors import NoTrainerAvailable, PermanentStepError, StepCancelled
from domain.events import EventType, record_event
from models import (
    HOLDING_STATUSES,
    Allocation,
    AllocationStatus,
    Course,
    DeadLetter,
    DeadLetterStatus,
    DomainEvent,
    Hold,
    HoldStatus,
    OutboxKind,
    Payment,
    PaymentStatus,
    Purchase,
    SessionStatus,
    Student,
    TutoringSession,
    outbox,
)


def lock_live_payment(session: Session, payment_id: uuid.UUID) -> Payment:
    """Share-lock the payment and insist it is still paid for.

    Every forward step calls this first, and a refund updates the same row: so either
    the step sees the refund and stops, or it commits before the refund does and the
    compensation (which runs after the refund's commit) undoes what it made.
    """
    payment = session.scalar(_PAYMENT_SHARE_LOCKED, {"payment_id": payment_id})
    if payment is None:
        raise PermanentStepError(f"payment {payment_id} does not exist")
    return _still_paid_for(payment)


def _share_locked(query: Select) -> Select:
    """`query`, share-locking the payment row it reads, as the row is now."""
    return query.with_for_update(read=True, of=Payment).execution_options(
        populate_existing=True  # a locking read must see the row as it is
    )


# The locking reads every step makes, built once (bound parameters): building a statement
# and its cache key on each call cost more than running it (BENCHMARKS.md, "Issue 25").
_PAYMENT_SHARE_LOCKED = _share_locked(
    select(Payment).where(Payment.id == bindparam("payment_id", type_=Payment.id.type))
)
_ALLOCATION_ID = bindparam("allocation_id", type_=BigInteger)
_ALLOCATIONS_PAYMENT_SHARE_LOCKED = _share_locked(
    select(Payment)
    .join(Purchase, Purchase.payment_id == Payment.id)
    .join(Allocation, Allocation.purchase_id == Purchase.id)
    .where(Allocation.id == _ALLOCATION_ID)
)
_ALLOCATION_LOCKED = (
    select(Allocation)
    .where(Allocation.id == _ALLOCATION_ID)
    .with_for_update()
    .execution_options(populate_existing=True)
)


_PURCHASE_ID = bindparam("purchase_id", type_=BigInteger)
# allocate_trainer's first read, one round trip: the purchase with its payment
# share-locked (lock_live_payment), the allocation it may already have, and the
# student's zone and the course's session length (wanted_by).
_PURCHASE_TO_ALLOCATE = _share_locked(
    select(Purchase, Payment, Allocation, Student.timezone, Course.session_minutes)
    .join(Payment, Payment.id == Purchase.payment_id)
    .join(Student, Student.id == Purchase.student_id)
    .join(Course, Course.id == Purchase.course_id)
    .outerjoin(Allocation, Allocation.purchase_id == Purchase.id)
    .where(Purchase.id == _PURCHASE_ID)
)
_HOLD_LOCKED = (
    select(Hold)
    .where(Hold.payment_id == bindparam("payment_id", type_=Hold.payment_id.type))
    .with_for_update()
)
_WANTED = (
    select(Student.timezone, Course.session_minutes)
    .join(Course, Course.id == bindparam("course_id", type_=BigInteger))
    .where(Student.id == bindparam("student_id", type_=BigInteger))
)


# schedule_window's read, one round trip: the student, trainer and course (the planner's
# zone and length, the booking notice's names and addresses) and the allocation's
# sessions so far: used (not cancelled), still ahead, the last date. The same statement
# moves an approved allocation to active (its first window is being booked now; the row
# is already locked by this transaction). A data-modifying CTE: the read beside it sees
# the row as it was, and a later error in the step rolls it back with the rest. Plain
# SQL: as an update() it would take the read's student_id, trainer_id and course_id
# parameters, named like the allocation's columns, for more columns to SET.
_ACTIVATED = (
    text(
        "UPDATE trainer_allocations SET status = :active_status"
        " WHERE id = :allocation_id AND status = :approved_status"
    )
    .columns()
    .cte("activated")
)
_WINDOW_SO_FAR = (
    select(
        func.count().filter(TutoringSession.status != SessionStatus.CANCELLED).label("used"),
        func.count()
        .filter(
            and_(
                TutoringSession.status == SessionStatus.SCHEDULED,
                TutoringSession.starts_at > bindparam("now", type_=DateTime(timezone=True)),
            )
        )
        .label("future"),
        func.max(TutoringSession.scheduled_date).label("last_date"),
    )
    .where(TutoringSession.allocation_id == _ALLOCATION_ID)
    .subquery("so_far")  # an aggregate: always one row
)
_PEOPLE_AND_WINDOW = (
    notifications.PARTIES.add_columns(
        _WINDOW_SO_FAR.c.used, _WINDOW_SO_FAR.c.future, _WINDOW_SO_FAR.c.last_date
    )
    .join(_WINDOW_SO_FAR, true())
    .add_cte(_ACTIVATED)
)


def _still_paid_for(payment: Payment) -> Payment:
    if payment.status == PaymentStatus.REFUNDED:
        raise StepCancelled(f"payment {payment.id} was refunded")
    if payment.status != PaymentStatus.SUCCEEDED:
        raise PermanentStepError(f"payment {payment.id} is {payment.status}, not succeeded")
    return payment


# create_purchase's usual case in one statement: the payment share-locked and still paid
# for (what lock_live_payment insists on), and its purchase inserted from it. Plain SQL:
# SQLAlchemy gives a PostgreSQL INSERT … ON CONFLICT no cache key, so built with
# pg_insert it was compiled afresh on every step (BENCHMARKS.md, "Issue 25").
_NEW_PURCHASE = select(Purchase).from_statement(
    text(
        "WITH paid AS ("
        " SELECT id, student_id, course_id, tier, time_slot FROM payments"
        " WHERE id = CAST(:payment_id AS uuid) AND status = :succeeded FOR SHARE)"
        " INSERT INTO student_course_purchases (payment_id, student_id, course_id, tier, time_slot)"
        " SELECT id, student_id, course_id, tier, time_slot FROM paid"
        " ON CONFLICT DO NOTHING RETURNING *"
    )
)

# allocate_trainer's three writes in one statement, the allocation as inserted (no
# unit-of-work flush: an ORM add cost one): the hold `hold_id` converted (NULL: none, a
# payment made before holds), the trainer's place taken (change_load's +1; the
# CHECK on active_students refuses an overfill), the allocation inserted. Both rows are
# already locked by this transaction (_HOLD_LOCKED; the trainer by claim_trainer or
# find_trainer).
_NEW_ALLOCATION = select(Allocation).from_statement(
    text(
        "WITH converted AS ("
        "UPDATE holds SET status = :hold_status WHERE id = :hold_id"
        "), placed AS ("
        "UPDATE trainers SET active_students = active_students + 1 WHERE id = :trainer_id"
        ") INSERT INTO trainer_allocations"
        " (purchase_id, student_id, course_id, trainer_id, time_slot, sessions_total, status)"
        " VALUES (:purchase_id, :student_id, :course_id, :trainer_id, :time_slot,"
        " :sessions_total, :status) RETURNING *"
    )
)


def create_purchase(session: Session, payment_id: uuid.UUID) -> Purchase:
    """The payment's purchase, made once. No row from the one statement: the payment is
    not (or no longer) paid for, which lock_live_payment's read then says, or the
    purchase exists (a redelivery: returned), or another purchase of the course is
    active (refused for good)."""
    # ON CONFLICT covers both a purchase already made for this payment (redelivery)
    # and another active purchase of the same course (told apart just below).
    purchase = session.scalar(  # the row as inserted: no second read
        _NEW_PURCHASE, {"payment_id": str(payment_id), "succeeded": PaymentStatus.SUCCEEDED}
    )
    if purchase is None:
        payment = lock_live_payment(session, payment_id)
        existing = session.scalar(select(Purchase).where(Purchase.payment_id == payment.id))
        if existing is not None:
            return existing
        raise PermanentStepError(
            f"student {payment.student_id} already has course {payment.course_id} active "
            "through another payment"
        )
    record_event(
        session,
        correlation_id=payment_id,
        student_id=purchase.student_id,
        event_type=EventType.PURCHASE_CREATED,
        payload={"purchase_id": purchase.id},
    )
    return purchase


def wanted_by(
    session: Session,
    allocation_or_purchase: Allocation | Purchase,
    people: notifications.Parties | None = None,
) -> Wanted:
    """`people`: the allocation's parties if the caller read them (no query then)."""
    if people is not None:
        student, _, course = people
        return _wanted(allocation_or_purchase, student.timezone, course.session_minutes)
    timezone, minutes = session.execute(
        _WANTED,
        {
            "student_id": allocation_or_purchase.student_id,
            "course_id": allocation_or_purchase.course_id,
        },
    ).one()
    return _wanted(allocation_or_purchase, timezone, minutes)


def _wanted(allocation_or_purchase: Allocation | Purchase, timezone: str, minutes: int) -> Wanted:
    sessions = (
        allocation_or_purchase.sessions_total
        if isinstance(allocation_or_purchase, Allocation)
        else allocation_or_purchase.tier
    )
    return Wanted(
        allocation_or_purchase.course_id,
        timezone,
        allocation_or_purchase.time_slot,
        minutes,
        sessions,
    )


def allocate_trainer(
    session: Session, purchase_id: int, *, now: datetime | None = None
) -> Allocation | None:
    """Turn the checkout's hold into the purchase's allocation (DESIGN invariant 10).

    A live hold whose trainer can still take the tier becomes the allocation without a
    search. Otherwise (the hold expired, or its trainer was deactivated or changed
    hours) the time is taken again if some trainer is free for it (find_trainer); if
    none is, the payment is refused: None, with ALLOCATION_REFUSED on the timeline and
    the refund published after commit (never a dead letter for want of a trainer). A
    payment made before holds existed has none: a trainer is searched for, and none
    free is NoTrainerAvailable (retried; the give-up refund after hours). The CHECK on
    `active_students` and the exclusion constraint on sessions back this up in the
    database."""
    now = now or utcnow()
    found = session.execute(_PURCHASE_TO_ALLOCATE, {"purchase_id": purchase_id}).one_or_none()
    if found is None:
        raise PermanentStepError(f"purchase {purchase_id} does not exist")
    purchase = found.Purchase
    _still_paid_for(found.Payment)
    if found.Allocation is not None:
        return found.Allocation
    if not purchase.is_active:
        raise PermanentStepError(f"purchase {purchase_id} is no longer active")
    wanted = _wanted(purchase, found.timezone, found.session_minutes)
    hold = session.scalar(_HOLD_LOCKED, {"payment_id": purchase.payment_id})
    if hold is None:
        trainer_id = find_trainer(session, wanted, now=now)
        if trainer_id is None:
            raise NoTrainerAvailable(
                f"no trainer free for course {purchase.course_id} at {purchase.time_slot:%H:%M}"
            )
    else:
        trainer_id = _trainer_for_hold(session, hold, wanted, now)
        if trainer_id is None:
            _refuse(session, purchase, hold, now)
            return None
    allocation = session.scalars(
        _NEW_ALLOCATION,  # the hold converted, the place taken, the row as inserted
        {
            "hold_id": None if hold is None else hold.id,
            "hold_status": HoldStatus.CONVERTED,
            "purchase_id": purchase.id,
            "student_id": purchase.student_id,
            "course_id": purchase.course_id,
            "trainer_id": trainer_id,
            "time_slot": purchase.time_slot,
            "sessions_total": purchase.tier,
            "status": AllocationStatus.APPROVED,
        },
    ).one()
    if hold is not None:
        set_committed_value(hold, "status", HoldStatus.CONVERTED)  # as the UPDATE wrote it
    record_event(
        session,
        correlation_id=purchase.payment_id,
        student_id=purchase.student_id,
        event_type=EventType.TRAINER_ALLOCATED,
        payload={"allocation_id": allocation.id, "trainer_id": trainer_id},
    )
    return allocation


class RefusalReason(StrEnum):
    HOLD_EXPIRED = "hold_expired"  # paid after the hold lapsed, and the time was taken
    TRAINER_UNAVAILABLE = "trainer_unavailable"  # the held trainer left; nobody else free


def _trainer_for_hold(session: Session, hold: Hold, wanted: Wanted, now: datetime) -> int | None:
    """The held trainer while the hold lives and the trainer can still take the tier;
    else any trainer free for it (the hold itself left out of the count); None if none."""
    live = hold.status == HoldStatus.HELD and hold.expires_at > now
    if live and claim_trainer(
        session, hold.trainer_id, wanted, now=now, leave_out_hold=hold.payment_id
    ):
        return hold.trainer_id
    return find_trainer(session, wanted, now=now, leave_out_hold=hold.payment_id)


def _refuse(session: Session, purchase: Purchase, hold: Hold, now: datetime) -> None:
    """No trainer can serve the paid course: release the hold, say why on the timeline,
    and hand the payment to the refund saga (refunded at the provider, then compensated;
    the student is told by the refund's e-mail)."""
    live = hold.status == HoldStatus.HELD and hold.expires_at > now
    reason = RefusalReason.TRAINER_UNAVAILABLE if live else RefusalReason.HOLD_EXPIRED
    hold.status = HoldStatus.RELEASED
    record_event(
        session,
        correlation_id=purchase.payment_id,
        student_id=purchase.student_id,
        event_type=EventType.ALLOCATION_REFUSED,
        payload={"reason": reason, "time_slot": f"{purchase.time_slot:%H:%M}"},
    )
    outbox.write(
        session,
        OutboxKind.REFUND_UNSERVABLE,
        correlation_id=purchase.payment_id,
        payload={"payment_id": str(purchase.payment_id), "reason": reason},
    )


def lock_live_allocation(session: Session, allocation_id: int) -> tuple[uuid.UUID, Allocation]:
    """Share-lock its payment (still paid for: lock_live_payment), then lock the
    allocation row: the order a refund locks in. Returns (payment id, allocation)."""
    key = {"allocation_id": allocation_id}
    payment = session.scalar(_ALLOCATIONS_PAYMENT_SHARE_LOCKED, key)
    if payment is None:
        raise PermanentStepError(f"allocation {allocation_id} does not exist")
    payment_id = _still_paid_for(payment).id
    allocation = session.execute(_ALLOCATION_LOCKED, key).scalar_one()
    return payment_id, allocation


@dataclass(frozen=True)
class Scheduled:
    """What schedule_window did: whose window it was, and the sessions it created."""

    student_id: int
    created: list[PlannedSession]


def schedule_sessions(
    session: Session, allocation_id: int, *, now: datetime, window: int
) -> list[PlannedSession]:
    """schedule_window's new sessions (none when the window is already full)."""
    return schedule_window(session, allocation_id, now=now, window=window).created


def schedule_window(
    session: Session, allocation_id: int, *, now: datetime, window: int
) -> Scheduled:
    """Top the allocation up to `window` future sessions, within its tier.

    The allocation row is locked, so two schedulers of one allocation (the chain and
    a beat top-up) run one after the other; the unique slot per allocation backs it.
    """
    payment_id, allocation = lock_live_allocation(session, allocation_id)
    if allocation.status not in HOLDING_STATUSES:
        return Scheduled(allocation.student_id, [])
    read = session.execute(
        _PEOPLE_AND_WINDOW,
        {
            "student_id": allocation.student_id,
            "trainer_id": allocation.trainer_id,
            "course_id": allocation.course_id,
            "allocation_id": allocation.id,
            "now": now,
            "approved_status": AllocationStatus.APPROVED,
            "active_status": AllocationStatus.ACTIVE,
        },
    ).one()
    if allocation.status == AllocationStatus.APPROVED:  # as the read's CTE wrote it
        set_committed_value(allocation, "status", AllocationStatus.ACTIVE)
    people: notifications.Parties = (read.Student, read.Trainer, read.Course)
    wanted = wanted_by(session, allocation, people)
    needed = sessions_needed(
        future=read.future, used=read.used, total=allocation.sessions_total, window=window
    )
    # The trainer's row is locked first (bookings.trainer_calendars), so the booked
    # intervals read with it stay true until commit.
    calendar = trainer_calendars(session, [allocation.trainer_id], now=now)[allocation.trainer_id]
    plan = plan_window(
        now=now,
        timezone=wanted.timezone,
        slot=allocation.time_slot,
        minutes=wanted.minutes,
        count=needed,
        last_scheduled=read.last_date,
        busy=calendar.busy,
        hours=calendar.hours,
    )
    created = insert_sessions(session, allocation, plan.sessions)
    record_shifts(session, payment_id, allocation, plan.shifts)
    if created:
        # The student's confirmation and the trainer's notice, sent off the chain.
        notifications.sessions_booked_notice(
            session, payment_id, allocation, [s.starts_at for s in created], people
        )
        # Last, so that the step's record writes it (models.defer_event).
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
    return Scheduled(allocation.student_id, created)


def session_rows(
    allocation_id: int, student_id: int, trainer_id: int, planned: list[PlannedSession]
) -> list[dict[str, object]]:
    """tutoring_sessions rows for an allocation's planned sessions (chain and top-up)."""
    return [
        {
            "allocation_id": allocation_id,
            "student_id": student_id,
            "trainer_id": trainer_id,
            "scheduled_date": p.scheduled_date,
            "scheduled_time": p.scheduled_time,
            "starts_at": p.starts_at,
            "ends_at": p.ends_at,
        }
        for p in planned
    ]


# Core, and nothing comes back: the planned sessions are what was inserted (a clash
# raises), so no ORM objects are built for them. One statement either way: as an
# executemany (SQLAlchemy's insertmanyvalues) it is compiled once per process.
_INSERT_SESSIONS = insert(TutoringSession)


def insert_sessions(
    session: Session, allocation: Allocation, planned: list[PlannedSession]
) -> list[PlannedSession]:
    """Insert the planned sessions; returns them (all, or the insert raised)."""
    if planned:
        rows = session_rows(allocation.id, allocation.student_id, allocation.trainer_id, planned)
        # On the session's connection: the ORM's bulk-insert path is for objects.
        session.connection().execute(_INSERT_SESSIONS, rows)
    return planned


def record_shifts(
    session: Session, payment_id: uuid.UUID, allocation: Allocation, shifts: list[Shift]
) -> None:
    """A SESSION_SHIFTED event per moved date, on the payment's timeline; the student
    is told in one e-mail."""
    notifications.sessions_shifted_notice(
        session,
        payment_id,
        student_id=allocation.student_id,
        allocation_id=allocation.id,
        slot=allocation.time_slot,
        shifts=shifts,
    )
    for shift in shifts:
        record_event(
            session,
            correlation_id=payment_id,
            student_id=allocation.student_id,
            event_type=EventType.SESSION_SHIFTED,
            payload=shift_payload(allocation.id, shift),
        )


def shift_payload(allocation_id: int, shift: Shift) -> dict[str, object]:
    return {
        "allocation_id": allocation_id,
        "wanted": shift.wanted.isoformat(),
        "got": shift.got.isoformat(),
        "reason": shift.reason,
    }


def _unfinished_confirmed() -> Select:
    """Confirmed payments whose chain has not reached its schedule, with no open dead
    letter (an operator owns those): the payment row joined to its purchase and
    allocation, for stalled_payments (what to resume) and oldest_unfinished_confirmation
    (how far behind the pipeline is, for /metrics)."""
    parked = (
        select(DeadLetter.id)
        .where(
            DeadLetter.correlation_id == cast(Payment.id, String),
            DeadLetter.status == DeadLetterStatus.OPEN,
        )
        .exists()
    )
    return (
        select(Payment.id, Payment.student_id)
        .outerjoin(Purchase, Purchase.payment_id == Payment.id)
        .outerjoin(Allocation, Allocation.purchase_id == Purchase.id)
        .where(
            # Confirming too: a verify step lost with the broker is asked again.
            Payment.status.in_([PaymentStatus.SUCCEEDED, PaymentStatus.CONFIRMING]),
            Payment.confirmed_at.is_not(None),
            or_(
                Purchase.id.is_(None),
                Allocation.id.is_(None),
                Allocation.status == AllocationStatus.APPROVED,
            ),
            ~parked,
        )
    )


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
    return list(
        session.execute(
            _unfinished_confirmed()
            .where(Payment.confirmed_at < now - stall, ~resumed_recently)
            .order_by(Payment.confirmed_at)
            .limit(limit)
        )
    )


def oldest_unfinished_confirmation(session: Session) -> datetime | None:
    """When the longest-waiting confirmed, unfinished, not dead-lettered payment was
    confirmed (None: the pipeline is caught up). A payment resumed by beat still counts:
    resuming is not finishing."""
    unfinished = _unfinished_confirmed().subquery()
    return session.scalar(
        select(func.min(Payment.confirmed_at)).where(Payment.id.in_(select(unfinished.c.id)))
    )


def unallocated_payments(
    session: Session, *, now: datetime, give_up: timedelta, limit: int
) -> list[uuid.UUID]:
    """Paid payments whose purchase has found no trainer for `give_up` since the student
    confirmed, or whose allocation has waited that long for a new trainer: to be
    refunded (DESIGN: a paid course that cannot be served is not left hanging)."""
    return list(
        session.scalars(
            select(Payment.id)
            .join(Purchase, Purchase.payment_id == Payment.id)
            .outerjoin(Allocation, Allocation.purchase_id == Purchase.id)
            .where(
                Payment.status == PaymentStatus.SUCCEEDED,
                Purchase.is_active,
                or_(
                    and_(Allocation.id.is_(None), Payment.confirmed_at < now - give_up),
                    # Its trainer left and nobody took it since (reallocation.start_waiting).
                    and_(
                        Allocation.status == AllocationStatus.WAITING,
                        Allocation.waiting_since < now - give_up,
                    ),
                ),
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
    outbox.write(
        session,
        OutboxKind.START_PIPELINE,
        correlation_id=payment_id,
        payload={"payment_id": str(payment_id)},
    )
