"""A trainer's time as the database holds it: working hours and booked intervals,
read under the trainer's row lock.

Every writer of a trainer's sessions (the chain's scheduling, the beat top-up, a
reschedule, a reallocation) locks the trainer rows first, in id order, then reads what
is booked: so what it plans stays true until it commits, and writers cannot deadlock.
The exclusion constraint on tutoring_sessions is the last word if anything slips.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Date,
    DateTime,
    Integer,
    Select,
    String,
    Time,
    and_,
    any_,
    bindparam,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from domain.calendar import Busy, WorkingHours, projected
from models import (
    HOLDING_STATUSES,
    Allocation,
    Course,
    Hold,
    HoldStatus,
    Purchase,
    SessionStatus,
    Student,
    Trainer,
    TutoringSession,
    WorkingDay,
    id_array,
)


@dataclass(frozen=True)
class Places:
    """A trainer's row as the locking read returned it: whether it takes students, and
    how many it has and may have (live holds not counted)."""

    is_active: bool
    active_students: int
    max_students: int


@dataclass
class TrainerCalendar:
    hours: WorkingHours
    busy: Busy
    places: Places
    # The live holds among `busy` (with projections only; the hold left out is not one).
    live_holds: int = 0


def lock_trainers(session: Session, trainer_ids: Iterable[int]) -> list[int]:
    """FOR UPDATE on the trainers, in id order; returns the ids in that order."""
    ordered = sorted(set(trainer_ids))
    if ordered:
        session.execute(
            select(Trainer.id).where(Trainer.id.in_(ordered)).order_by(Trainer.id).with_for_update()
        )
    return ordered


def working_hours(
    session: Session, trainer_ids: list[int], *, lock: bool = False
) -> dict[int, WorkingHours]:
    """The trainers' zones and weeks in one round trip; with `lock`, their rows locked
    too (FOR UPDATE OF trainers, in id order)."""
    return {
        trainer_id: hours for trainer_id, (hours, _) in _hours(session, trainer_ids, lock).items()
    }


def _hours(
    session: Session, trainer_ids: list[int], lock: bool
) -> dict[int, tuple[WorkingHours, Places]]:
    """working_hours, with each trainer's Places from the same row."""
    places: dict[int, tuple[str, Places]] = {}
    days: dict[int, dict] = defaultdict(dict)
    rows = session.execute(_working_hours_query(lock), {"trainer_ids": list(trainer_ids)})
    for trainer_id, zone, active, students, most, weekday, starts, ends in rows:
        places[trainer_id] = (zone, Places(active, students, most))
        if weekday is not None:
            days[trainer_id][weekday] = (starts, ends)
    return {
        trainer_id: (WorkingHours(zone, days[trainer_id]), place)
        for trainer_id, (zone, place) in places.items()
    }


# The reads every step and checkout makes of a trainer's time, built once per shape with
# bound parameters: building a statement and its cache key on each call was a tenth of
# the pipeline worker's CPU (BENCHMARKS.md, "Issue 25").
_TRAINER_IDS = id_array("trainer_ids")
_NOW = bindparam("now", type_=DateTime(timezone=True))


@cache
def _working_hours_query(lock: bool) -> Select[Any]:
    query = (
        select(
            Trainer.id,
            Trainer.timezone,
            Trainer.is_active,
            Trainer.active_students,
            Trainer.max_students,
            WorkingDay.weekday,
            WorkingDay.starts,
            WorkingDay.ends,
        )
        .outerjoin(WorkingDay, WorkingDay.trainer_id == Trainer.id)
        .where(Trainer.id == any_(_TRAINER_IDS))
        .order_by(Trainer.id)
    )
    return query.with_for_update(of=Trainer) if lock else query


@cache
def _booked_query(leave_out_allocation: bool) -> Select[Any]:
    query = select(
        TutoringSession.trainer_id, TutoringSession.starts_at, TutoringSession.ends_at
    ).where(TutoringSession.trainer_id == any_(_TRAINER_IDS), _scheduled_after(_NOW))
    if leave_out_allocation:
        query = query.where(TutoringSession.allocation_id != bindparam("leave_out_allocation"))
    return query


def _scheduled_after(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """Scheduled sessions not over yet (ix_sessions_trainer_scheduled_ends_at)."""
    return and_(TutoringSession.status == SessionStatus.SCHEDULED, TutoringSession.ends_at > now)


def trainer_calendars(
    session: Session,
    trainer_ids: Iterable[int],
    *,
    now: datetime,
    with_projections: bool = False,
    leave_out_allocation: int | None = None,
    leave_out_hold: uuid.UUID | None = None,
    lock: bool = True,
) -> dict[int, TrainerCalendar]:
    """Lock the trainers (unless `lock` is False: availability only reads) and read
    their hours and booked intervals. With `with_projections`, the intervals the rest of
    each live allocation's tier will claim are booked too, and so is the whole span of
    each live hold (what a new student's whole tier must not meet). The sessions of
    `leave_out_allocation` (the allocation being moved) and the hold of the payment
    `leave_out_hold` (the one being turned into its allocation) are left out.

    Two round trips either way: the locking read first, then the booked time, so that
    what is booked is read by a statement that starts after the locks are granted
    (READ COMMITTED: it sees every writer this one waited for)."""
    ordered = sorted(set(trainer_ids))
    if not ordered:
        return {}
    hours = _hours(session, ordered, lock)
    intervals: dict[int, list] = defaultdict(list)
    holds: dict[int, int] = defaultdict(int)
    params = {
        "trainer_ids": ordered,
        "now": now,
        "leave_out_allocation": leave_out_allocation,
        "leave_out_hold": leave_out_hold,
    }
    if not with_projections:
        booked = session.execute(_booked_query(leave_out_allocation is not None), params)
        for trainer_id, starts_at, ends_at in booked:
            intervals[trainer_id].append((starts_at, ends_at))
    else:
        query = _booked_time_query(leave_out_allocation is not None, leave_out_hold is not None)
        for row in session.execute(query, params):
            intervals[row.trainer_id].extend(_booked_intervals(row, now))
            holds[row.trainer_id] += row.kind == _HOLD
    return {
        trainer_id: TrainerCalendar(
            hours[trainer_id][0],
            Busy(intervals[trainer_id]),
            hours[trainer_id][1],
            holds[trainer_id],
        )
        for trainer_id in ordered
        if trainer_id in hours
    }


# The kinds of _booked_time_query's rows.
_SESSION, _ALLOCATION, _HOLD = "session", "allocation", "hold"


@cache
def _booked_time_query(leave_out_allocation: bool, leave_out_hold: bool) -> CompoundSelect:
    """trainer_calendars' three reads of booked time in one statement (UNION ALL, a
    `kind` column): the scheduled sessions (_booked_query), the live allocations
    (_live_allocations_query) and the live holds (_live_holds_query), each with its own
    conditions unchanged. A row is (kind, trainer_id, starts_at, ends_at) for a session,
    and (kind, trainer_id, timezone, time_slot, minutes, count, after) for what a
    projection needs: the sessions still to come of an allocation's tier after its last
    date, or a hold's whole tier after the day it counts from."""
    booked = _booked_query(leave_out_allocation).subquery()
    allocations = _live_allocations_query(leave_out_allocation, False).subquery()
    holds = _live_holds_query(leave_out_hold).subquery()
    no_interval = (cast(null(), DateTime(timezone=True)),) * 2
    no_projection = tuple(cast(null(), type_) for type_ in (String, Time, Integer, Integer, Date))
    return union_all(
        select(
            literal(_SESSION).label("kind"),
            booked.c.trainer_id,
            booked.c.starts_at,
            booked.c.ends_at,
            *no_projection,
        ),
        select(
            literal(_ALLOCATION),
            allocations.c.trainer_id,
            *no_interval,
            allocations.c.timezone,
            allocations.c.time_slot,
            allocations.c.session_minutes,
            allocations.c.sessions_total - allocations.c.used,
            allocations.c.last_date,
        ),
        select(
            literal(_HOLD),
            holds.c.trainer_id,
            *no_interval,
            holds.c.timezone,
            holds.c.time_slot,
            holds.c.session_minutes,
            holds.c.sessions,
            holds.c.starts_after,
        ),
    )


def _booked_intervals(row: Any, now: datetime) -> list[tuple[datetime, datetime]]:
    """The intervals one row of _booked_time_query books (columns by position: kind,
    trainer, start, end, zone, time, minutes, count, after)."""
    kind, _, starts_at, ends_at, timezone, slot, minutes, count, after = row
    if kind == _SESSION:
        return [(starts_at, ends_at)]
    if kind == _ALLOCATION:
        after = _rest_after(after, now)
    return projected(
        now=now, timezone=timezone, slot=slot, minutes=minutes, count=count, after=after
    )


def booked_sessions(
    session: Session, trainer_ids: list[int], *, now: datetime, until: datetime
) -> list[tuple[int, datetime, datetime]]:
    """(trainer, start, end) of the trainers' scheduled sessions not over at `now` that
    start before `until`: trainer_calendars' booked sessions, as far as `until`."""
    query = select(
        TutoringSession.trainer_id, TutoringSession.starts_at, TutoringSession.ends_at
    ).where(
        TutoringSession.trainer_id.in_(trainer_ids),
        _scheduled_after(now),
        TutoringSession.starts_at < until,
    )
    return [
        (trainer_id, starts_at, ends_at)
        for trainer_id, starts_at, ends_at in session.execute(query)
    ]


def booked_epochs(
    session: Session, trainer_ids: list[int], *, now: datetime, until: datetime
) -> list[tuple[int, int, int]]:
    """booked_sessions as (trainer, start, end) in whole epoch seconds, the start floored
    and the end ceiled: plain integers, without a datetime per row."""
    starts = cast(func.floor(func.extract("epoch", TutoringSession.starts_at)), BigInteger)
    ends = cast(func.ceil(func.extract("epoch", TutoringSession.ends_at)), BigInteger)
    query = select(TutoringSession.trainer_id, starts, ends).where(
        TutoringSession.trainer_id.in_(trainer_ids),
        _scheduled_after(now),
        TutoringSession.starts_at < until,
    )
    return [tuple(row) for row in session.execute(query)]


def live_allocations(session: Session, trainer_ids: list[int]) -> list[Any]:
    """The trainers' live allocations with what _rest_of_tier projects them from: zone,
    time, length, sessions_total, sessions used and the last one's date."""
    return list(_live_allocations(session, trainer_ids, None))


def _live_allocations(
    session: Session, trainer_ids: list[int], leave_out: int | None, only: int | None = None
):
    return session.execute(
        _live_allocations_query(leave_out is not None, only is not None),
        {"trainer_ids": list(trainer_ids), "leave_out_allocation": leave_out, "only": only},
    ).all()


@cache
def _live_allocations_query(leave_out: bool, only: bool) -> Select[Any]:
    not_cancelled = TutoringSession.status != SessionStatus.CANCELLED
    counts = (
        select(
            func.count().filter(not_cancelled).label("used"),
            func.max(TutoringSession.scheduled_date).filter(not_cancelled).label("last_date"),
        )
        .where(TutoringSession.allocation_id == Allocation.id)
        .lateral("counts")
    )
    query = (
        select(
            Allocation.trainer_id,
            Allocation.time_slot,
            Allocation.sessions_total,
            Student.timezone,
            Course.session_minutes,
            counts.c.used,
            counts.c.last_date,
        )
        .join(Student, Student.id == Allocation.student_id)
        .join(Course, Course.id == Allocation.course_id)
        .join(counts, literal(True))
        .where(Allocation.trainer_id == any_(_TRAINER_IDS), Allocation.status.in_(HOLDING_STATUSES))
    )
    if leave_out:
        query = query.where(Allocation.id != bindparam("leave_out_allocation"))
    if only:
        query = query.where(Allocation.id == bindparam("only"))
    return query


def change_load(session: Session, trainer_id: int, delta: int) -> None:
    """A trainer takes (+1) or gives back (-1) a student's place; the CHECK on
    active_students refuses an overfill."""
    session.execute(_CHANGE_LOAD, {"trainer_id": trainer_id, "delta": delta})


_CHANGE_LOAD = (
    update(Trainer)
    .where(Trainer.id == bindparam("trainer_id", type_=BigInteger))
    .values(active_students=Trainer.active_students + bindparam("delta", type_=Integer))
)


def ahead_of(allocation_id: int, now: datetime) -> ColumnElement[bool]:
    """An allocation's scheduled sessions that have not started."""
    return and_(
        TutoringSession.allocation_id == allocation_id,
        TutoringSession.status == SessionStatus.SCHEDULED,
        TutoringSession.starts_at > now,
    )


def is_live_hold(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """A hold that counts: held and not expired (ix_holds_trainer_held). `now` may be a
    bound parameter of a prebuilt statement."""
    return and_(Hold.status == HoldStatus.HELD, Hold.expires_at > now)


# A live hold as both reads of them select it (here and availability.course_live_holds):
# its trainer and what its span is projected from (calendar.projected).
HELD_SPAN_COLUMNS = (
    Hold.trainer_id,
    Hold.timezone,
    Hold.time_slot,
    Hold.session_minutes,
    Hold.sessions,
    Hold.starts_after,
)


@cache
def _live_holds_query(leave_out_hold: bool) -> Select[Any]:
    """The trainers' live holds (HELD_SPAN_COLUMNS)."""
    query = select(*HELD_SPAN_COLUMNS).where(
        Hold.trainer_id == any_(_TRAINER_IDS), is_live_hold(_NOW)
    )
    if leave_out_hold:
        query = query.where(
            Hold.payment_id != bindparam("leave_out_hold", type_=Hold.payment_id.type)
        )
    return query


def holding_allocations(session: Session, trainer_id: int) -> list[tuple[int, Any, int]]:
    """(allocation id, payment id, student id) of the trainer's live allocations."""
    return [
        tuple(row)
        for row in session.execute(
            select(Allocation.id, Purchase.payment_id, Allocation.student_id)
            .join(Purchase, Purchase.id == Allocation.purchase_id)
            .where(Allocation.trainer_id == trainer_id, Allocation.status.in_(HOLDING_STATUSES))
            .order_by(Allocation.id)
        )
    ]


def serves(session: Session, allocation: Allocation, *, now: datetime) -> bool:
    """Whether the allocation's trainer can still serve it: active, and every booked and
    coming session of the tier inside the trainer's working hours."""
    trainer = session.get_one(Trainer, allocation.trainer_id)
    if not trainer.is_active:
        return False
    hours = working_hours(session, [trainer.id])[trainer.id]
    return _tier_inside(session, allocation, hours, now)


def allocations_outside_hours(
    session: Session, trainer_id: int, *, now: datetime
) -> list[tuple[int, Any, int]]:
    """The trainer's live allocations with a booked or coming session outside its
    (new) working hours."""
    hours = working_hours(session, [trainer_id])[trainer_id]
    return [
        row
        for row in holding_allocations(session, trainer_id)
        if not _tier_inside(session, session.get_one(Allocation, row[0]), hours, now)
    ]


def _tier_inside(
    session: Session, allocation: Allocation, hours: WorkingHours, now: datetime
) -> bool:
    """Every booked and coming session of the allocation's tier inside `hours`."""
    intervals = _tier_intervals(session, allocation, now)
    return all(hours.contains(start, end) for start, end in intervals)


def _tier_intervals(
    session: Session, allocation: Allocation, now: datetime
) -> list[tuple[datetime, datetime]]:
    """The allocation's scheduled future sessions and the projection of the rest of
    its tier."""
    booked = session.execute(
        select(TutoringSession.starts_at, TutoringSession.ends_at).where(
            TutoringSession.allocation_id == allocation.id, _scheduled_after(now)
        )
    ).all()
    [row] = _live_allocations(session, [allocation.trainer_id], None, allocation.id)
    return [(start, end) for start, end in booked] + _rest_of_tier(row, now)


def _rest_of_tier(row: Any, now: datetime) -> list[tuple[datetime, datetime]]:
    """A live allocation's sessions not yet on the calendar, where they will fall."""
    return projected(
        now=now,
        timezone=row.timezone,
        slot=row.time_slot,
        minutes=row.session_minutes,
        count=row.sessions_total - row.used,
        after=_rest_after(row.last_date, now),
    )


def _rest_after(last_date: date | None, now: datetime) -> date:
    """The day the rest of an allocation's tier follows: its last session's date, or
    today if that is past (or there is none yet)."""
    today = now.date()
    return max(last_date or today, today)
