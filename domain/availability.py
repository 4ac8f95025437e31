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
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    DateTime,
    Select,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.allocation import TrainerLoad, rank_trainers
from domain.bookings import (
    HELD_SPAN_COLUMNS,
    TrainerCalendar,
    booked_epochs,
    is_live_hold,
    live_allocations,
    trainer_calendars,
    working_hours,
)
from domain.calendar import END_OF_DAY, Busy, WorkingHours, occurrences, projected, span_fits
from domain.calendar import tier_span as calendar_tier_span
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
    first: list[tuple[datetime, datetime]] | None = None,
    leave_out_hold: uuid.UUID | None = None,
) -> list[TrainerLoad]:
    """The course's active trainers, their load counting live holds
    (but the hold `leave_out_hold`, the one being turned into its allocation). With
    `first` (the student's first sessions), trainers booked at any of them are left out
    at once, in SQL (the exclusion constraint's GiST index answers it): a cheap
    necessary condition, so the full check (span_fits) rarely meets a trainer it must
    refuse."""
    params = {"course_id": course_id, "now": now, "leave_out_hold": leave_out_hold}
    query = _loads_query(leave_out_hold is not None)
    if first:
        booked = func.tstzrange(TutoringSession.starts_at, TutoringSession.ends_at)
        clash = exists().where(
            TutoringSession.trainer_id == Trainer.id,
            TutoringSession.status == SessionStatus.SCHEDULED,
            or_(*(booked.op("&&")(func.tstzrange(start, end)) for start, end in first)),
        )
        query = query.where(~clash)
    return [TrainerLoad(*row) for row in session.execute(query, params)]


@cache
def _loads_query(leave_out_hold: bool) -> Select[Any]:
    """trainer_loads' statement but the `first` prefilter, built once per shape (its
    bound parameters: course_id, now, leave_out_hold)."""
    teaches = exists().where(
        TrainerCourse.trainer_id == Trainer.id,
        TrainerCourse.course_id == bindparam("course_id", type_=BigInteger),
    )
    holding = [
        Hold.trainer_id == Trainer.id,
        is_live_hold(bindparam("now", type_=DateTime(timezone=True))),
    ]
    if leave_out_hold:
        holding.append(Hold.payment_id != bindparam("leave_out_hold", type_=Hold.payment_id.type))
    held = select(func.count()).where(*holding).scalar_subquery()
    return select(
        Trainer.id,
        Trainer.is_active,
        teaches.label("teaches"),
        (Trainer.active_students + held).label("load"),
        Trainer.max_students,
    ).where(teaches, Trainer.is_active)


# How many of the student's first sessions the SQL prefilter checks (find_trainer).
PREFILTER_SESSIONS = 2


def tier_span(wanted: Wanted, now: datetime) -> list[tuple[datetime, datetime]]:
    """The student's next `sessions` weekday sessions at the slot: the tier's span."""
    return calendar_tier_span(
        now=now,
        timezone=wanted.timezone,
        slot=wanted.slot,
        minutes=wanted.minutes,
        count=wanted.sessions,
    )


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
    releasing it.

    The trainer is one who teaches the course (find_trainer's candidates, or a hold's
    trainer, found the same way; a trainer's courses are set when it is created). What
    can change meanwhile is checked here under the lock: active, a place free (its
    students and live holds, as trainer_loads counts them) and the time free. Four
    statements: the savepoint, the locking read of the trainer's row and hours, its
    booked time, the release."""
    savepoint = session.begin_nested()
    calendar = trainer_calendars(
        session,
        [trainer_id],
        now=now,
        with_projections=True,
        leave_out_allocation=moving_allocation,
        leave_out_hold=leave_out_hold,
    ).get(trainer_id)
    if calendar is not None and _has_place(trainer_id, calendar):
        busy = calendar.busy if require_free else Busy()
        if span_fits(tier_span(wanted, now), hours=calendar.hours, busy=busy):
            savepoint.commit()
            return True
    savepoint.rollback()
    return False


def _has_place(trainer_id: int, calendar: TrainerCalendar) -> bool:
    """The locked trainer's place as trainer_loads would read it for a course it teaches."""
    places = calendar.places
    load = places.active_students + calendar.live_holds
    return TrainerLoad(trainer_id, places.is_active, True, load, places.max_students).eligible


def offers(
    session: Session,
    *,
    course_id: int,
    timezone: str,
    tier: int,
    now: datetime,
    snapshot: CalendarSnapshot | None = None,
) -> list[Offer]:
    """The times of the grid (in `timezone`, the student's) at which the course's tier
    can be served for its whole span, with the places at each; only times with a place.
    Reads without locking: what a checkout then takes is checked again under the
    trainer's lock (find_trainer).

    The booked time comes in two parts. The slow part (working hours, scheduled
    sessions, the projected rest of live allocations' tiers) is `snapshot`, read by
    read_calendar_snapshot at some earlier `now` and reused (the caller decides for how
    long: core.snapshots.Snapshots, kept on app.runtime.Runtime); without one (or one
    that does not reach the span's horizon) it is read now, for this call only. The
    fast part (trainers' places and live holds) is read on every call. With a snapshot
    read at this `now`, or none, the answer is exactly span_fits for every (trainer, time) over
    trainer_calendars with projections (tests/test_availability_equivalence)."""
    minutes = _course_minutes(session, course_id)
    _check_tier(tier)
    loads = trainer_loads(session, course_id, now=now)
    if not any(load.eligible for load in loads):
        return []
    spans = grid_spans(timezone, minutes, tier, now)
    if snapshot is None or not snapshot.covers(course_id, spans):
        snapshot = read_calendar_snapshot(session, course_id, now=now, until=spans.horizon)
    holds = course_live_holds(session, course_id, now=now)
    return offers_from(snapshot, loads, holds, spans, now=now)


def offers_from(
    snapshot: CalendarSnapshot,
    loads: list[TrainerLoad],
    holds: list[HeldSpan],
    spans: GridSpans,
    *,
    now: datetime,
) -> list[Offer]:
    """offers' answer from its parts: the snapshot's hours and booked time (masks kept
    in the snapshot per spans), the trainers' places (`loads`) and the live holds, both
    read now. A trainer the snapshot does not know (it began teaching the course after
    the snapshot was read) offers nothing until the next snapshot."""
    inside, booked = snapshot.masks(spans)
    held: dict[int, int] = defaultdict(int)
    for hold in holds:
        if hold.trainer_id in inside:
            held[hold.trainer_id] |= spans.projection(
                hold.timezone,
                hold.time_slot,
                hold.minutes,
                hold.sessions,
                hold.starts_after,
                now=now,
            )
    free = []
    for load in loads:
        mask = inside.get(load.trainer_id, 0)
        if mask and load.eligible:
            mask &= ~(booked.get(load.trainer_id, 0) | held.get(load.trainer_id, 0))
            if mask:
                free.append(mask)
    places = _bit_counts(free, len(spans.slots))
    return [Offer(slot, count) for slot, count in zip(spans.slots, places, strict=True) if count]


class GridSpans:
    """The tier's span at every time of the grid, for one student zone, session length,
    tier and local day: what offers asks of each trainer. A set of grid times is an int
    whose bit i is time i of the grid."""

    def __init__(
        self,
        spans: list[list[tuple[datetime, datetime]]],
        minutes: int,
        key: tuple | None = None,
    ) -> None:
        # (student zone, minutes, tier, local day) when the spans are that day's
        # (grid_spans): what a CalendarSnapshot keeps its masks by; None otherwise.
        self.key = key
        self.slots = grid()
        self.spans = spans
        self.length = timedelta(minutes=minutes)
        # Every session of every span, by start: the times whose span meets a booked
        # interval [start, end) are those with a session starting in (start - length, end).
        pairs = sorted(
            (starts_at, 1 << index) for index, span in enumerate(spans) for starts_at, _ in span
        )
        self._starts = [starts_at for starts_at, _ in pairs]
        self._bits = [bit for _, bit in pairs]
        # The same starts in whole epoch seconds (a span's sessions start at whole
        # seconds), for booked time read as epoch seconds (CalendarSnapshot).
        self._epoch_starts = [(starts_at - _EPOCH) // _SECOND for starts_at in self._starts]
        self._epoch_length = self.length // _SECOND
        self.empty = sum(1 << index for index, span in enumerate(spans) if not span)
        ends = [ends_at for span in spans for _, ends_at in span]
        self.horizon = max(ends) if ends else None
        self._inside: dict[tuple, int] = {}
        self._local: dict[str, list[dict[int, tuple[time, time]] | None]] = {}
        self._prefixes: dict[tuple, tuple[list[int], datetime | None]] = {}

    def meets(self, starts_at: datetime, ends_at: datetime) -> int:
        """The times whose span overlaps [starts_at, ends_at) (Busy.overlaps' rule)."""
        low = bisect_right(self._starts, starts_at - self.length)
        high = bisect_left(self._starts, ends_at)
        mask = 0
        for bit in self._bits[low:high]:
            mask |= bit
        return mask

    def meets_epoch(self, starts_at: int, ends_at: int) -> int:
        """meets for an interval in epoch seconds, its start floored and its end ceiled:
        a whole-second span start s has start - length < s < end exactly when it has
        floor(start) - length < s < ceil(end)."""
        low = bisect_right(self._epoch_starts, starts_at - self._epoch_length)
        high = bisect_left(self._epoch_starts, ends_at)
        mask = 0
        for bit in self._bits[low:high]:
            mask |= bit
        return mask

    def projection(
        self,
        timezone: str,
        slot: time,
        minutes: int,
        count: int,
        after: date,
        *,
        now: datetime,
    ) -> int:
        """The times whose span meets the first `count` sessions at `slot` on the
        weekdays after `after` that start after `now` (calendar.projected: a live
        allocation's rest of tier, a hold's span): prefix masks per (zone, time, length,
        first day), kept (across snapshots: they depend on nothing booked) and used while
        none of their sessions is past `now`."""
        key = (timezone, slot, minutes, after)
        found = self._prefixes.get(key)
        if found is None or (found[1] is not None and found[1] <= now):
            masks, first = [0], None
            for _, starts_at, ends_at in occurrences(
                timezone=timezone, slot=slot, minutes=minutes, after=after, now=_DAWN
            ):
                if starts_at >= (self.horizon or _DAWN):
                    break
                if first is None:
                    first = starts_at
                    if starts_at <= now:  # some are past: for this `now` only
                        return _projection_at(self, timezone, slot, minutes, count, after, now)
                masks.append(masks[-1] | self.meets(starts_at, ends_at))
            found = self._prefixes[key] = (masks, first)
        masks = found[0]
        return masks[min(max(count, 0), len(masks) - 1)]

    def inside(self, hours: WorkingHours) -> int:
        """The times whose every session lies inside `hours` (WorkingHours.contains for
        each), once per distinct zone and week."""
        key = (hours.timezone, tuple(sorted(hours.days.items())))
        mask = self._inside.get(key)
        if mask is None:
            mask = self.empty
            for index, envelope in enumerate(self._envelopes(hours.timezone)):
                if envelope is not None and all(
                    (window := hours.days.get(weekday)) is not None
                    and first >= window[0]
                    and (last < window[1] or window[1] == END_OF_DAY)
                    for weekday, (first, last) in envelope.items()
                ):
                    mask |= 1 << index
            self._inside[key] = mask
        return mask

    def _envelopes(self, zone_name: str) -> list[dict[int, tuple[time, time]] | None]:
        """Per time of the grid, the span's sessions as a trainer in `zone_name` reads
        them: for each local weekday, the earliest start and the latest last moment
        (None if a session starts and ends on different local days). Every session
        inside a week's window of its weekday is the same as the earliest start and the
        latest end inside it."""
        found = self._local.get(zone_name)
        if found is None:
            zone = ZoneInfo(zone_name)
            found = []
            for span in self.spans:
                envelope: dict[int, tuple[time, time]] = {}
                for starts_at, ends_at in span:
                    start, last = starts_at.astimezone(zone), (ends_at - _TICK).astimezone(zone)
                    if start.date() != last.date():
                        found.append(None)
                        break
                    weekday, first, final = start.weekday(), start.time(), last.time()
                    if weekday in envelope:
                        low, high = envelope[weekday]
                        envelope[weekday] = (min(low, first), max(high, final))
                    else:
                        envelope[weekday] = (first, final)
                else:
                    found.append(envelope)
            self._local[zone_name] = found
        return found


_TICK = timedelta(microseconds=1)  # calendar.WorkingHours: an interval's last moment
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def grid_spans(timezone: str, minutes: int, tier: int, now: datetime) -> GridSpans:
    """The tier's spans over the grid (tier_span at each time). They depend on `now` only
    through the student's local day, as long as each span's first session is after
    `now` (weekdays after today always are): so they are kept per day, and worked out
    afresh otherwise."""
    today = _local_today(now, timezone)
    spans = _grid_spans(timezone, minutes, tier, today)
    if all(span[0][0] > now for span in spans.spans if span):
        return spans
    return GridSpans(_spans_at(timezone, minutes, tier, today, now), minutes)


@lru_cache(maxsize=64)
def _grid_spans(timezone: str, minutes: int, tier: int, today: date) -> GridSpans:
    return GridSpans(
        _spans_at(timezone, minutes, tier, today, _DAWN),
        minutes,
        key=(timezone, minutes, tier, today),
    )


_DAWN = datetime.min.replace(tzinfo=UTC)


def _spans_at(
    timezone: str, minutes: int, tier: int, today: date, now: datetime
) -> list[list[tuple[datetime, datetime]]]:
    spans = []
    for slot in grid():
        upcoming = occurrences(timezone=timezone, slot=slot, minutes=minutes, after=today, now=now)
        spans.append([(start, end) for _, start, end in islice(upcoming, tier)])
    return spans


def _bit_counts(masks: list[int], width: int) -> list[int]:
    """For each bit 0 .. width-1, how many of `masks` have it set: the masks are added
    bit-sliced (planes[k] holds bit k of every count), a few big-int operations per
    mask instead of one per set bit."""
    planes: list[int] = []
    for mask in masks:
        carry, k = mask, 0
        while carry:
            if k == len(planes):
                planes.append(carry)
                break
            plane = planes[k]
            planes[k], carry = plane ^ carry, plane & carry
            k += 1
    return [
        sum(((plane >> index) & 1) << k for k, plane in enumerate(planes)) for index in range(width)
    ]


@dataclass(frozen=True)
class HeldSpan:
    """A live hold, as offers books it: its tier's span at its time, from its first day."""

    trainer_id: int
    timezone: str
    time_slot: time
    minutes: int
    sessions: int
    starts_after: date


def course_live_holds(session: Session, course_id: int, *, now: datetime) -> list[HeldSpan]:
    """The live holds of the trainers who teach the course."""
    teachers = select(TrainerCourse.trainer_id).where(TrainerCourse.course_id == course_id)
    query = select(*HELD_SPAN_COLUMNS).where(Hold.trainer_id.in_(teachers), is_live_hold(now))
    return [HeldSpan(*row) for row in session.execute(query)]


# How far ahead a snapshot reads booked time: past the last end of the longest tier's
# span from any zone's today (local today is at most a day after UTC's; 30 weekdays
# after it end within 44 days; a day more covers the zones behind UTC and the session).
SNAPSHOT_DAYS = 7 * ((max(TIERS) + 4) // 5) + 5


def snapshot_until(now: datetime) -> datetime:
    """How far a snapshot read at `now` reads booked time (SNAPSHOT_DAYS)."""
    return datetime.combine(now.date() + timedelta(days=SNAPSHOT_DAYS), time(), UTC)


@dataclass
class CalendarSnapshot:
    """The slow part of a course's booked time, read once at `taken_at` and reusable for
    every student zone and tier: its trainers' working hours, their scheduled sessions
    that start before `until` (as whole epoch seconds: start floored, end ceiled, which
    meet the grid's whole-second spans exactly as the instants do), and their live
    allocations with what the rest of each tier is projected from. Masks worked out from
    it are kept per GridSpans key (student zone, session length, tier, local day), so a
    second request with the same key only combines masks."""

    course_id: int
    taken_at: datetime
    until: datetime | None
    hours: dict[int, WorkingHours]
    # (start, end) in epoch seconds -> the trainers booked then.
    intervals: dict[tuple[int, int], list[int]]
    # (trainer, student zone, time, minutes, sessions left, projected after this day).
    allocations: list[tuple[int, str, time, int, int, date]]
    _masks: dict[tuple, tuple[dict[int, int], dict[int, int]]] = field(
        default_factory=dict, repr=False
    )

    def covers(self, course_id: int, spans: GridSpans) -> bool:
        """Whether it is this course's and holds all booked time the spans can meet."""
        return course_id == self.course_id and (
            spans.horizon is None or (self.until is not None and spans.horizon <= self.until)
        )

    def masks(self, spans: GridSpans) -> tuple[dict[int, int], dict[int, int]]:
        """Per trainer, the times whose whole span lies inside its hours (trainers with
        none left out), and the times whose span meets its booked sessions or the rest
        of its live allocations' tiers (as at `taken_at`)."""
        found = self._masks.get(spans.key) if spans.key is not None else None
        if found is None:
            found = self._work_out(spans)
            if spans.key is not None:
                self._masks[spans.key] = found
        return found

    def _work_out(self, spans: GridSpans) -> tuple[dict[int, int], dict[int, int]]:
        inside = {
            trainer_id: mask
            for trainer_id, hours in self.hours.items()
            if (mask := spans.inside(hours))
        }
        booked: dict[int, int] = defaultdict(int)
        if spans.horizon is None:
            return inside, booked
        for (starts_at, ends_at), trainer_ids in self.intervals.items():
            if mask := spans.meets_epoch(starts_at, ends_at):
                for trainer_id in trainer_ids:
                    booked[trainer_id] |= mask
        for trainer_id, zone, slot, minutes, count, after in self.allocations:
            if trainer_id in inside:
                booked[trainer_id] |= spans.projection(
                    zone, slot, minutes, count, after, now=self.taken_at
                )
        return inside, dict(booked)


def _projection_at(
    spans: GridSpans,
    timezone: str,
    slot: time,
    minutes: int,
    count: int,
    after: date,
    now: datetime,
) -> int:
    mask = 0
    for taken, (_, starts_at, ends_at) in enumerate(
        occurrences(timezone=timezone, slot=slot, minutes=minutes, after=after, now=now)
    ):
        if taken >= count or starts_at >= (spans.horizon or _DAWN):
            break
        mask |= spans.meets(starts_at, ends_at)
    return mask


def read_calendar_snapshot(
    session: Session,
    course_id: int,
    *,
    now: datetime,
    until: datetime | None = None,
    previous: CalendarSnapshot | None = None,
) -> CalendarSnapshot:
    """The slow part of the course's booked time at `now` (CalendarSnapshot), for every
    trainer who teaches the course: booked sessions up to `until`, by default as far as
    any tier's span can reach (SNAPSHOT_DAYS). With `previous` (the snapshot it
    replaces), the masks of every student zone, length and tier that one was asked
    about are worked out at once: the request that reads the snapshot pays for them,
    not the first request of each."""
    if until is None:
        until = snapshot_until(now)
    trainer_ids = list(
        session.scalars(
            select(TrainerCourse.trainer_id)
            .where(TrainerCourse.course_id == course_id)
            .order_by(TrainerCourse.trainer_id)
        )
    )
    if not trainer_ids:
        return CalendarSnapshot(course_id, now, until, {}, {}, [])
    hours = working_hours(session, trainer_ids)
    intervals: dict[tuple[int, int], list[int]] = defaultdict(list)
    for trainer_id, starts_at, ends_at in booked_epochs(session, trainer_ids, now=now, until=until):
        intervals[(starts_at, ends_at)].append(trainer_id)
    today = now.date()
    allocations = [
        (
            row.trainer_id,
            row.timezone,
            row.time_slot,
            row.session_minutes,
            row.sessions_total - row.used,
            max(row.last_date or today, today),
        )
        for row in live_allocations(session, trainer_ids)
    ]
    snapshot = CalendarSnapshot(course_id, now, until, hours, dict(intervals), allocations)
    if previous is not None:
        for timezone, minutes, tier, _ in list(previous._masks):
            spans = grid_spans(timezone, minutes, tier, now)
            if snapshot.covers(course_id, spans):
                snapshot.masks(spans)
    return snapshot


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


def course_minutes(session: Session, course_id: int) -> int:
    """The course's session length; NotFound for an unknown course."""
    return _course_minutes(session, course_id)


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
