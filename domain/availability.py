"""What can be sold: the times of day at which a course's tier can be served, the
trainer search behind them, and the hold a checkout places (DESIGN invariant 10).

One rule everywhere. A time is offered to a student, a checkout accepts it, and the
allocation step takes a trainer for it only if some active trainer who teaches the course
has a place (`max_students` minus allocations minus live holds) and is free for the
tier's whole span: each of the student's next `tier` weekday sessions at that local time
lies inside the trainer's working hours (real instants, so DST on either side counts) and
meets none of the trainer's booked sessions, the rest of its students' tiers, nor the
span of any live hold. `calendar.span_fits` is that rule; `offers` asks it for every
time of the grid, `find_trainer` for one time, under the trainer's row lock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.allocation import TrainerLoad, rank_trainers
from domain.bookings import is_live_hold, trainer_calendars
from domain.calendar import Busy, occurrences, projected, span_fits
from domain.errors import Conflict, NotFound, Unprocessable
from models import (
    TIERS,
    Course,
    Hold,
    HoldStatus,
    SessionStatus,
    Student,
    Trainer,
    TrainerCourse,
    TutoringSession,
)

# The times of day a student can choose: every quarter of an hour, in their own zone.
SLOT_STEP_MINUTES = 15
# How many offered times a refused checkout suggests.
NEAREST = 3


@dataclass(frozen=True)
class Wanted:
    """What a student's tier asks of a trainer's week."""

    course_id: int
    timezone: str
    slot: time
    minutes: int
    sessions: int


@dataclass(frozen=True)
class Offer:
    """A time of day a course's tier can be bought at, and how many students could
    still take it now (trainers free for the whole span at that time)."""

    slot: time
    places: int


def grid() -> list[time]:
    """Every time of day a student can choose, in order."""
    return [time(minute // 60, minute % 60) for minute in range(0, 24 * 60, SLOT_STEP_MINUTES)]


def trainer_loads(
    session: Session,
    course_id: int,
    *,
    now: datetime,
    trainer_id: int | None = None,
    first: list[tuple[datetime, datetime]] | None = None,
    leave_out_hold: uuid.UUID | None = None,
) -> list[TrainerLoad]:
    """The course's active trainers (or one trainer), their load counting live holds
    (but the hold `leave_out_hold`, the one being turned into its allocation). With
    `first` (the student's first sessions), trainers booked at any of them are left out
    at once, in SQL (the exclusion constraint's GiST index answers it): a cheap
    necessary condition, so the full check (span_fits) rarely meets a trainer it must
    refuse."""
    teaches = exists().where(
        TrainerCourse.trainer_id == Trainer.id, TrainerCourse.course_id == course_id
    )
    holding = [Hold.trainer_id == Trainer.id, is_live_hold(now)]
    if leave_out_hold is not None:
        holding.append(Hold.payment_id != leave_out_hold)
    held = select(func.count()).where(*holding).scalar_subquery()
    query = select(
        Trainer.id,
        Trainer.is_active,
        teaches.label("teaches"),
        (Trainer.active_students + held).label("load"),
        Trainer.max_students,
    )
    if trainer_id is None:
        query = query.where(teaches, Trainer.is_active)
    else:
        query = query.where(Trainer.id == trainer_id)
    if first:
        booked = func.tstzrange(TutoringSession.starts_at, TutoringSession.ends_at)
        clash = exists().where(
            TutoringSession.trainer_id == Trainer.id,
            TutoringSession.status == SessionStatus.SCHEDULED,
            or_(*(booked.op("&&")(func.tstzrange(start, end)) for start, end in first)),
        )
        query = query.where(~clash)
    return [TrainerLoad(*row) for row in session.execute(query)]


# How many of the student's first sessions the SQL prefilter checks (find_trainer).
PREFILTER_SESSIONS = 2


def tier_span(wanted: Wanted, now: datetime) -> list[tuple[datetime, datetime]]:
    """The student's next `sessions` weekday sessions at the slot: the tier's span."""
    today = now.astimezone(ZoneInfo(wanted.timezone)).date()
    upcoming = occurrences(
        timezone=wanted.timezone, slot=wanted.slot, minutes=wanted.minutes, after=today, now=now
    )
    return [(start, end) for _, start, end in islice(upcoming, wanted.sessions)]


def find_trainer(
    session: Session,
    wanted: Wanted,
    *,
    now: datetime,
    excluding: int | None = None,
    moving_allocation: int | None = None,
    leave_out_hold: uuid.UUID | None = None,
    require_free: bool = True,
) -> int | None:
    """The least-loaded trainer who teaches the course, has a place and is free for the
    student's whole tier (span_fits), locked; None if nobody is.

    Each candidate is locked (FOR UPDATE) inside a savepoint and re-checked with fresh
    statements, so every allocation and hold of one trainer is serialized and sees the
    ones committed before it; an unsuitable trainer's lock is released at once by rolling
    the savepoint back, so a transaction waits on one trainer at a time and cannot
    deadlock. The caller keeps the chosen trainer's lock and savepoint. Without
    `require_free`, working hours that hold the slot are enough (a reallocation's last
    resort: the planner shifts what clashes).
    """
    first = projected(
        now=now,
        timezone=wanted.timezone,
        slot=wanted.slot,
        minutes=wanted.minutes,
        count=min(wanted.sessions, PREFILTER_SESSIONS),
        after=now.astimezone(ZoneInfo(wanted.timezone)).date(),
    )
    candidates = trainer_loads(
        session,
        wanted.course_id,
        now=now,
        first=first if require_free else None,
        leave_out_hold=leave_out_hold,
    )
    for candidate in rank_trainers(candidates):
        if candidate.trainer_id != excluding and claim_trainer(
            session,
            candidate.trainer_id,
            wanted,
            now=now,
            moving_allocation=moving_allocation,
            leave_out_hold=leave_out_hold,
            require_free=require_free,
        ):
            return candidate.trainer_id
    return None


def claim_trainer(
    session: Session,
    trainer_id: int,
    wanted: Wanted,
    *,
    now: datetime,
    moving_allocation: int | None = None,
    leave_out_hold: uuid.UUID | None = None,
    require_free: bool = True,
) -> bool:
    """Lock the trainer (in a savepoint) and check, with fresh statements, that it can
    take the student's whole tier: True keeps the lock; False rolls the savepoint back,
    releasing it."""
    savepoint = session.begin_nested()
    calendar = trainer_calendars(
        session,
        [trainer_id],
        now=now,
        with_projections=True,
        leave_out_allocation=moving_allocation,
        leave_out_hold=leave_out_hold,
    ).get(trainer_id)
    loads = trainer_loads(
        session, wanted.course_id, now=now, trainer_id=trainer_id, leave_out_hold=leave_out_hold
    )
    if calendar is not None and loads and loads[0].eligible:
        busy = calendar.busy if require_free else Busy()
        if span_fits(tier_span(wanted, now), hours=calendar.hours, busy=busy):
            savepoint.commit()
            return True
    savepoint.rollback()
    return False


def offers(
    session: Session,
    *,
    course_id: int,
    timezone: str,
    tier: int,
    now: datetime,
) -> list[Offer]:
    """The times of the grid (in `timezone`, the student's) at which the course's tier
    can be served for its whole span, with the places at each; only times with a place.
    Reads without locking: what a checkout then takes is checked again under the
    trainer's lock (find_trainer)."""
    minutes = _course_minutes(session, course_id)
    _check_tier(tier)
    eligible = [load for load in trainer_loads(session, course_id, now=now) if load.eligible]
    calendars = trainer_calendars(
        session, [load.trainer_id for load in eligible], now=now, with_projections=True, lock=False
    )
    found: list[Offer] = []
    for slot in grid():
        span = tier_span(Wanted(course_id, timezone, slot, minutes, tier), now)
        places = sum(
            1
            for calendar in calendars.values()
            if span_fits(span, hours=calendar.hours, busy=calendar.busy)
        )
        if places:
            found.append(Offer(slot, places))
    return found


def nearest(found: list[Offer], slot: time, count: int = NEAREST) -> list[time]:
    """The offered times closest to `slot` on the clock (either side, across midnight),
    the earlier first on a tie."""

    def distance(offer: Offer) -> tuple[int, int]:
        delta = abs(_minute(offer.slot) - _minute(slot))
        return min(delta, 24 * 60 - delta), _minute(offer.slot)

    return [offer.slot for offer in sorted(found, key=distance)[:count]]


def place_hold(
    session: Session,
    *,
    payment_id: uuid.UUID,
    student_id: int,
    course_id: int,
    tier: int,
    slot: time,
    now: datetime,
    hold_minutes: float,
) -> Hold:
    """Take a trainer's place at `slot` for the tier's span until `hold_minutes` from
    now, for the payment to be `payment_id` (the hold already placed for it, if any: an
    idempotent checkout's twin). No trainer can serve it: Conflict `slot_unavailable`,
    naming the nearest offered times, and nothing written."""
    existing = session.scalar(select(Hold).where(Hold.payment_id == payment_id))
    if existing is not None:
        return existing
    timezone = session.scalar(select(Student.timezone).where(Student.id == student_id))
    if timezone is None:
        raise NotFound("unknown_student", "No student has this id.", field="student_id")
    minutes = _course_minutes(session, course_id)
    wanted = Wanted(course_id, timezone, slot, minutes, tier)
    trainer_id = find_trainer(session, wanted, now=now)
    if trainer_id is None:
        found = offers(session, course_id=course_id, timezone=timezone, tier=tier, now=now)
        raise Conflict(
            "slot_unavailable",
            "No trainer can serve this time for the tier's whole span; choose an offered time "
            f"(GET /api/v1/courses/{course_id}/availability).",
            time_slot=f"{slot:%H:%M}",
            timezone=timezone,
            tier=tier,
            nearest=[f"{t:%H:%M}" for t in nearest(found, slot)],
        )
    hold = session.scalar(
        pg_insert(Hold)
        .values(
            payment_id=payment_id,
            student_id=student_id,
            course_id=course_id,
            trainer_id=trainer_id,
            time_slot=slot,
            timezone=timezone,
            session_minutes=minutes,
            sessions=tier,
            starts_after=_local_today(now, timezone),
            expires_at=now + timedelta(minutes=hold_minutes),
        )
        .on_conflict_do_nothing(index_elements=[Hold.payment_id])
        .returning(Hold)
    )
    # A twin with the same payment id placed it meanwhile: theirs is ours.
    return hold or session.scalars(select(Hold).where(Hold.payment_id == payment_id)).one()


def drop_hold(session: Session, payment_id: uuid.UUID) -> None:
    """Forget a hold whose checkout did not happen (the provider was unreachable)."""
    session.execute(
        delete(Hold).where(Hold.payment_id == payment_id, Hold.status == HoldStatus.HELD)
    )


def extend_hold(session: Session, payment_id: uuid.UUID, *, now: datetime, minutes: float) -> None:
    """The student says they paid: a live hold keeps the place while the provider's word
    is awaited (`minutes` more from now, never less than it had)."""
    session.execute(
        update(Hold)
        .where(Hold.payment_id == payment_id, is_live_hold(now))
        .values(expires_at=func.greatest(Hold.expires_at, now + timedelta(minutes=minutes)))
    )


def release_expired(session: Session, *, now: datetime, limit: int) -> list[uuid.UUID]:
    """Mark up to `limit` expired holds released; their payment ids. (They stopped
    counting at `expires_at` already: this makes the table say so.)"""
    expired = (
        select(Hold.id)
        .where(Hold.status == HoldStatus.HELD, Hold.expires_at <= now)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return list(
        session.scalars(
            update(Hold)
            .where(Hold.id.in_(expired))
            .values(status=HoldStatus.RELEASED)
            .returning(Hold.payment_id)
        )
    )


def _course_minutes(session: Session, course_id: int) -> int:
    minutes = session.scalar(select(Course.session_minutes).where(Course.id == course_id))
    if minutes is None:
        raise NotFound("unknown_course", "No course has this id.", field="course_id")
    return minutes


def _check_tier(tier: int) -> None:
    if tier not in TIERS:
        raise Unprocessable("unknown_tier", "A tier is 10, 20 or 30 sessions.", tier=tier)


def _local_today(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def _minute(slot: time) -> int:
    return slot.hour * 60 + slot.minute
