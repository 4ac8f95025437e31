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

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from domain import notifications
from domain.availability import find_trainer
from domain.bookings import lock_trainers, serves, trainer_calendars
from domain.calendar import PlannedSession, Shift, ShiftReason, plan_window
from domain.errors import NoTrainerAvailable
from domain.events import EventType, record_event
from domain.fulfilment import lock_live_allocation, record_shifts, wanted_by
from models import (
    HOLDING_STATUSES,
    Allocation,
    OutboxKind,
    OutboxMessage,
    SessionStatus,
    Trainer,
    TutoringSession,
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
    session.add(
        OutboxMessage(
            correlation_id=payment_id,
            kind=OutboxKind.REALLOCATE,
            payload={"allocation_id": allocation_id, "payment_id": str(payment_id)},
        )
    )


@dataclass(frozen=True)
class Moved:
    allocation_id: int
    student_id: int
    from_trainer: int
    to_trainer: int
    kept: int  # sessions that kept their time
    shifts: list[Shift]


def reallocate(session: Session, allocation_id: int, *, now: datetime) -> Moved | None:
    """Give the allocation another trainer and move its future sessions: each keeps its
    time where the new trainer is free and working, else moves to the next free weekday
    after the tier's last booked date (a SESSION_SHIFTED event says so). None when no
    move is needed (any more). No trainer free: NoTrainerAvailable (retried, then
    dead-lettered; a replay once a trainer exists finishes the move)."""
    payment_id, allocation = lock_live_allocation(session, allocation_id)
    if allocation.status not in HOLDING_STATUSES:
        return None
    old_trainer = allocation.trainer_id
    lock_trainers(session, [old_trainer])
    if serves(session, allocation, now=now):
        return None
    wanted = wanted_by(session, allocation)
    used = session.scalar(
        select(func.count()).where(
            TutoringSession.allocation_id == allocation.id,
            TutoringSession.status != SessionStatus.CANCELLED,
            TutoringSession.starts_at <= now,
        )
    )
    remaining = replace(wanted, sessions=wanted.sessions - (used or 0))
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
        raise NoTrainerAvailable(
            f"no trainer free to take allocation {allocation_id} "
            f"(course {allocation.course_id} at {allocation.time_slot:%H:%M})"
        )
    for trainer_id, change in sorted({old_trainer: -1, new_trainer: +1}.items()):
        session.execute(
            update(Trainer)
            .where(Trainer.id == trainer_id)
            .values(active_students=Trainer.active_students + change)
        )
    allocation.trainer_id = new_trainer
    kept, shifts = _move_sessions(session, allocation, wanted.timezone, wanted.minutes, now)
    moved = Moved(allocation.id, allocation.student_id, old_trainer, new_trainer, kept, shifts)
    record_event(
        session,
        correlation_id=payment_id,
        student_id=allocation.student_id,
        event_type=EventType.TRAINER_REALLOCATED,
        payload={
            "allocation_id": allocation.id,
            "from_trainer_id": old_trainer,
            "to_trainer_id": new_trainer,
            "sessions_kept": kept,
            "sessions_shifted": len(shifts),
        },
    )
    record_shifts(session, payment_id, allocation, shifts)
    notifications.trainer_changed_notice(
        session, payment_id, allocation, from_trainer_id=old_trainer, now=now
    )
    return moved


def _move_sessions(
    session: Session, allocation: Allocation, timezone: str, minutes: int, now: datetime
) -> tuple[int, list[Shift]]:
    future = list(
        session.scalars(
            select(TutoringSession)
            .where(
                TutoringSession.allocation_id == allocation.id,
                TutoringSession.status == SessionStatus.SCHEDULED,
                TutoringSession.starts_at > now,
            )
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
