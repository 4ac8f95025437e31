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
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import islice
from zoneinfo import ZoneInfo

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.allocation import TrainerLoad, rank_trainers
from domain.bookings import (
    booked_sessions,
    is_live_hold,
    live_allocations,
    live_holds,
    trainer_calendars,
    working_hours,
)
from domain.calendar import END_OF_DAY, Busy, WorkingHours, occurrences, projected, span_fits
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
    trainer's lock (find_trainer).

    The answer is span_fits for every (trainer, time) over the trainer's calendar
    (trainer_calendars with projections), computed in bulk: each time of the grid is a
    bit of an int, a trainer's week gives the times whose whole span lies inside its
    hours (once per distinct zone and week), and each booked interval the times whose
    span meets it (once per distinct interval); booked time is read only up to the
    span's last end, since nothing later can meet it. tests/test_availability_equivalence
    holds it to span_fits."""
    minutes = _course_minutes(session, course_id)
    _check_tier(tier)
    eligible = [
        load.trainer_id for load in trainer_loads(session, course_id, now=now) if load.eligible
    ]
    if not eligible:
        return []
    spans = grid_spans(timezone, minutes, tier, now)
    # Times whose whole span lies inside each trainer's hours; trainers with none are
    # not asked about their booked time.
    inside = {
        trainer_id: mask
        for trainer_id, hours in working_hours(session, eligible).items()
        if (mask := spans.inside(hours))
    }
    if not inside:
        return []
    met = booked_masks(session, spans, sorted(inside), now=now)
    places = [0] * len(spans.slots)
    for trainer_id, mask in inside.items():
        free = mask & ~met.get(trainer_id, 0)
        while free:
            low = free & -free
            places[low.bit_length() - 1] += 1
            free ^= low
    return [Offer(slot, count) for slot, count in zip(spans.slots, places, strict=True) if count]


class GridSpans:
    """The tier's span at every time of the grid, for one student zone, session length,
    tier and local day: what offers asks of each trainer. A set of grid times is an int
    whose bit i is time i of the grid."""

    def __init__(self, spans: list[list[tuple[datetime, datetime]]], minutes: int) -> None:
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
        self.empty = sum(1 << index for index, span in enumerate(spans) if not span)
        ends = [ends_at for span in spans for _, ends_at in span]
        self.horizon = max(ends) if ends else None
        self._inside: dict[tuple, int] = {}
        self._local: dict[str, list[dict[int, tuple[time, time]] | None]] = {}

    def meets(self, starts_at: datetime, ends_at: datetime) -> int:
        """The times whose span overlaps [starts_at, ends_at) (Busy.overlaps' rule)."""
        low = bisect_right(self._starts, starts_at - self.length)
        high = bisect_left(self._starts, ends_at)
        mask = 0
        for bit in self._bits[low:high]:
            mask |= bit
        return mask

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
    return GridSpans(_spans_at(timezone, minutes, tier, today, _DAWN), minutes)


_DAWN = datetime.min.replace(tzinfo=UTC)


def _spans_at(
    timezone: str, minutes: int, tier: int, today: date, now: datetime
) -> list[list[tuple[datetime, datetime]]]:
    spans = []
    for slot in grid():
        upcoming = occurrences(timezone=timezone, slot=slot, minutes=minutes, after=today, now=now)
        spans.append([(start, end) for _, start, end in islice(upcoming, tier)])
    return spans


def booked_masks(
    session: Session, spans: GridSpans, trainer_ids: list[int], *, now: datetime
) -> dict[int, int]:
    """Per trainer, the times of the grid whose span meets its booked time: the
    intervals trainer_calendars(with_projections=True) books (scheduled sessions, the
    projected rest of each live allocation's tier, each live hold's span), read only
    up to the spans' horizon."""
    if spans.horizon is None:
        return {}
    horizon = spans.horizon
    met: dict[int, int] = defaultdict(int)
    known: dict[tuple[datetime, datetime], int] = {}
    for trainer_id, starts_at, ends_at in booked_sessions(
        session, trainer_ids, now=now, until=horizon
    ):
        mask = known.get((starts_at, ends_at))
        if mask is None:
            mask = known[(starts_at, ends_at)] = spans.meets(starts_at, ends_at)
        met[trainer_id] |= mask
    # A projection's first `count` intervals: each (zone, time, length, first day) once,
    # as masks of its prefixes up to the horizon.
    prefixes: dict[tuple, list[int]] = {}

    def projection(timezone: str, slot: time, minutes: int, count: int, after: date) -> int:
        key = (timezone, slot, minutes, after)
        masks = prefixes.get(key)
        if masks is None:
            masks = [0]
            for _, starts_at, ends_at in occurrences(
                timezone=timezone, slot=slot, minutes=minutes, after=after, now=now
            ):
                if starts_at >= horizon:
                    break
                masks.append(masks[-1] | spans.meets(starts_at, ends_at))
            prefixes[key] = masks
        return masks[min(max(count, 0), len(masks) - 1)]

    for row in live_allocations(session, trainer_ids):
        after = max(row.last_date or now.date(), now.date())
        count = row.sessions_total - row.used
        met[row.trainer_id] |= projection(
            row.timezone, row.time_slot, row.session_minutes, count, after
        )
    for hold in live_holds(session, trainer_ids, now=now):
        met[hold.trainer_id] |= projection(
            hold.timezone, hold.time_slot, hold.session_minutes, hold.sessions, hold.starts_after
        )
    return met


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
