"""Moving a live allocation to another trainer: the trainer was deactivated, or their
hours no longer hold the student's sessions.

`request_reallocation` writes the event and the outbox message (the chain is
published after commit). `reallocate` is the chain's step: idempotent without an
inbox, because it first asks whether the allocation still needs a move (a redelivery,
a replay or a second request after the move finds the new trainer serving it and does
nothing).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from domain import notifications
from domain.availability import Wanted, find_trainer
from domain.bookings import ahead_of, change_load, lock_trainers, serves, trainer_calendars
from domain.calendar import PlannedSession, Shift, ShiftReason, plan_window
from domain.events import EventType, record_event
from domain.fulfilment import lock_live_allocation, record_shifts, schedule_window, wanted_by
from models import (
    HOLDING_STATUSES,
    Allocation,
    AllocationStatus,
    OutboxKind,
    Purchase,
    SessionStatus,
    TutoringSession,
    outbox,
)


def request_reallocation(
    session: Session, *, allocation_id: int, payment_id: uuid.UUID, student_id: int, reason: str
) -> None:
    record_event(
        session,
        correlation_id=payment_id,
        student_id=student_id,
        event_type=EventType.REALLOCATION_REQUESTED,
        payload={"allocation_id": allocation_id, "reason": reason},
    )
    outbox.write(
        session,
        OutboxKind.REALLOCATE,
        correlation_id=payment_id,
        payload={"allocation_id": allocation_id, "payment_id": str(payment_id)},
    )


@dataclass(frozen=True)
class Moved:
    allocation_id: int
    student_id: int
    from_trainer: int
    to_trainer: int
    kept: int  # sessions that kept their time
    shifts: list[Shift]


def reallocate(session: Session, allocation_id: int, *, now: datetime, window: int) -> Moved | None:
    """Give the allocation another trainer and move its future sessions: each keeps its
    time where the new trainer is free and working, else moves to the next free weekday
    after the tier's last booked date (a SESSION_SHIFTED event says so). None when no
    move is needed (any more) or none is possible yet.

    No trainer free: the allocation waits (`waiting`, start_waiting) — its future
    sessions with the old trainer are cancelled, its place given back, the student told
    — instead of showing sessions nobody will teach. A waiting allocation asked again
    (a trainer became free: wake_waiting, or beat) is given the first trainer free for
    the rest of its tier and a new window of `window` sessions."""
    payment_id, allocation = lock_live_allocation(session, allocation_id)
    if allocation.status == AllocationStatus.WAITING:
        return _end_waiting(session, payment_id, allocation, now=now, window=window)
    if allocation.status not in HOLDING_STATUSES:
        return None
    old_trainer = allocation.trainer_id
    lock_trainers(session, [old_trainer])
    if serves(session, allocation, now=now):
        return None
    remaining = _rest_of_tier(session, allocation, now)
    # First a trainer free for the whole rest of the tier; failing that, one whose
    # working hours hold the slot (the planner shifts what clashes).
    new_trainer = find_trainer(
        session, remaining, now=now, excluding=old_trainer, moving_allocation=allocation.id
    ) or find_trainer(
        session,
        remaining,
        now=now,
        excluding=old_trainer,
        moving_allocation=allocation.id,
        require_free=False,
    )
    if new_trainer is None:
        start_waiting(session, payment_id, allocation, now=now)
        return None
    for trainer_id, change in sorted({old_trainer: -1, new_trainer: +1}.items()):
        change_load(session, trainer_id, change)
    allocation.trainer_id = new_trainer
    kept, shifts = _move_sessions(session, allocation, remaining.timezone, remaining.minutes, now)
    moved = Moved(allocation.id, allocation.student_id, old_trainer, new_trainer, kept, shifts)
    _record_move(session, payment_id, moved)
    record_shifts(session, payment_id, allocation, shifts)
    notifications.trainer_changed_notice(
        session, payment_id, allocation, from_trainer_id=old_trainer, now=now
    )
    return moved


def _rest_of_tier(session: Session, allocation: Allocation, now: datetime) -> Wanted:
    """What the allocation still asks of a trainer: its tier less the sessions held."""
    wanted = wanted_by(session, allocation)
    used = session.scalar(
        select(func.count()).where(
            TutoringSession.allocation_id == allocation.id,
            TutoringSession.status != SessionStatus.CANCELLED,
            TutoringSession.starts_at <= now,
        )
    )
    return replace(wanted, sessions=max(1, wanted.sessions - (used or 0)))


def _record_move(session: Session, payment_id: uuid.UUID, moved: Moved) -> None:
    record_event(
        session,
        correlation_id=payment_id,
        student_id=moved.student_id,
        event_type=EventType.TRAINER_REALLOCATED,
        payload={
            "allocation_id": moved.allocation_id,
            "from_trainer_id": moved.from_trainer,
            "to_trainer_id": moved.to_trainer,
            "sessions_kept": moved.kept,
            "sessions_shifted": len(moved.shifts),
        },
    )


def start_waiting(
    session: Session, payment_id: uuid.UUID, allocation: Allocation, *, now: datetime
) -> None:
    """Nobody can take the allocation: it waits for a trainer. Its future sessions with
    the trainer who left are withdrawn (deleted: they were never held, and the dates
    stay free for the next trainer's window; the event lists them), the trainer's
    place is given back, and the student is told — on the timeline, on the home screen
    and by e-mail."""
    withdrawn = session.scalars(
        delete(TutoringSession)
        .where(ahead_of(allocation.id, now))
        .returning(TutoringSession.starts_at)
    ).all()
    change_load(session, allocation.trainer_id, -1)
    allocation.status = AllocationStatus.WAITING
    allocation.waiting_since = now
    record_event(
        session,
        correlation_id=payment_id,
        student_id=allocation.student_id,
        event_type=EventType.ALLOCATION_WAITING,
        payload={
            "allocation_id": allocation.id,
            "from_trainer_id": allocation.trainer_id,
            "sessions_withdrawn": [s.isoformat() for s in sorted(withdrawn)],
        },
    )
    notifications.waiting_for_trainer_notice(
        session, payment_id, allocation, withdrawn=sorted(withdrawn)
    )


def _end_waiting(
    session: Session, payment_id: uuid.UUID, allocation: Allocation, *, now: datetime, window: int
) -> Moved | None:
    """A waiting allocation takes the first trainer free for the rest of its tier (any,
    the one who left included once back) and a new window of sessions; None (still
    waiting) while nobody is."""
    remaining = _rest_of_tier(session, allocation, now)
    new_trainer = find_trainer(session, remaining, now=now, moving_allocation=allocation.id)
    if new_trainer is None:
        return None
    old_trainer = allocation.trainer_id
    change_load(session, new_trainer, +1)
    allocation.trainer_id = new_trainer
    allocation.status = AllocationStatus.APPROVED
    allocation.waiting_since = None
    session.flush()
    # Its first sessions with the new trainer, and their booking notices.
    schedule_window(session, allocation.id, now=now, window=window)
    moved = Moved(allocation.id, allocation.student_id, old_trainer, new_trainer, 0, [])
    _record_move(session, payment_id, moved)
    notifications.trainer_changed_notice(
        session, payment_id, allocation, from_trainer_id=old_trainer, now=now
    )
    return moved


def wake_waiting(session: Session, course_ids: list[int] | None, *, limit: int) -> int:
    """A trainer became free for these courses (added, reactivated, hours or capacity
    widened; None: any course): ask the reallocation chain to try each waiting
    allocation of them again, the longest waiting first. Each asks find_trainer under
    the trainers' locks, so waking more than fit is harmless: the rest keep waiting.
    Returns how many were woken."""
    query = (
        select(Allocation.id, Purchase.payment_id, Allocation.student_id)
        .join(Purchase, Purchase.id == Allocation.purchase_id)
        .where(Allocation.status == AllocationStatus.WAITING)
        .order_by(Allocation.waiting_since)
        .limit(limit)
    )
    if course_ids is not None:
        if not course_ids:
            return 0
        query = query.where(Allocation.course_id.in_(course_ids))
    rows = session.execute(query).all()
    # No timeline event: a try that finds nobody changes nothing the student sees (the
    # move, when it happens, is TRAINER_REALLOCATED).
    for allocation_id, payment_id, _ in rows:
        outbox.write(
            session,
            OutboxKind.REALLOCATE,
            correlation_id=payment_id,
            payload={"allocation_id": allocation_id, "payment_id": str(payment_id)},
        )
    return len(rows)


def _move_sessions(
    session: Session, allocation: Allocation, timezone: str, minutes: int, now: datetime
) -> tuple[int, list[Shift]]:
    future = list(
        session.scalars(
            select(TutoringSession)
            .where(ahead_of(allocation.id, now))
            .order_by(TutoringSession.starts_at)
            .with_for_update()
        )
    )
    calendar = trainer_calendars(session, [allocation.trainer_id], now=now)[allocation.trainer_id]
    displaced: list[TutoringSession] = []
    for tutoring in future:
        if calendar.hours.contains(
            tutoring.starts_at, tutoring.ends_at
        ) and not calendar.busy.overlaps(tutoring.starts_at, tutoring.ends_at):
            tutoring.trainer_id = allocation.trainer_id
            calendar.busy.add(tutoring.starts_at, tutoring.ends_at)
        else:
            displaced.append(tutoring)
    if not displaced:
        session.flush()
        return len(future), []
    last_date = session.scalar(
        select(func.max(TutoringSession.scheduled_date)).where(
            and_(
                TutoringSession.allocation_id == allocation.id,
                TutoringSession.status != SessionStatus.CANCELLED,
            )
        )
    )
    plan = plan_window(
        now=now,
        timezone=timezone,
        slot=allocation.time_slot,
        minutes=minutes,
        count=len(displaced),
        last_scheduled=last_date,
        busy=calendar.busy,
        hours=calendar.hours,
    )
    shifts = []
    for tutoring, planned in zip(displaced, _padded(plan.sessions, len(displaced)), strict=True):
        if planned is None:
            # Nowhere within the planner's reach: cancelled, so it does not count
            # against the tier; the top-up books it when the calendar allows.
            tutoring.status = SessionStatus.CANCELLED
            continue
        shifts.append(
            Shift(
                wanted=tutoring.scheduled_date,
                got=planned.scheduled_date,
                reason=ShiftReason.TRAINER_CHANGED,
            )
        )
        tutoring.trainer_id = allocation.trainer_id
        tutoring.scheduled_date = planned.scheduled_date
        tutoring.starts_at = planned.starts_at
        tutoring.ends_at = planned.ends_at
    session.flush()
    return len(future) - len(displaced), shifts


def _padded(planned: list[PlannedSession], length: int) -> list[PlannedSession | None]:
    return [*planned, *([None] * (length - len(planned)))]
