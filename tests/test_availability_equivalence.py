"""availability.offers, computed in bulk (bit masks per time of the grid, booked time
read up to the span's horizon), gives what span_fits gives asked for every trainer and
time over trainer_calendars, and so does it over a calendar snapshot read at the same
`now` and reused for every zone and tier: on random catalogues of trainers in zones with DST of
their own and odd hours, with live and finished allocations, sessions past, future and
cancelled, and live, expired and released holds."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy.orm import Session

from domain import availability
from domain.availability import Offer, Wanted, grid, tier_span, trainer_loads
from domain.bookings import trainer_calendars
from domain.calendar import END_OF_DAY, Busy, occurrences, span_fits
from models import (
    Allocation,
    Hold,
    Payment,
    Purchase,
    TutoringSession,
)
from tests.factories import make_course, make_student, make_trainer

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/St_Johns",  # -03:30, DST
    "Asia/Tokyo",
    "Asia/Kolkata",  # +05:30
    "Australia/Sydney",
    "Australia/Lord_Howe",  # a 30-minute DST change
]
# Around the spring and autumn changes of both hemispheres, and a quiet week.
NOWS = [
    datetime(2027, 3, 10, 14, 5, tzinfo=UTC),
    datetime(2027, 3, 25, 23, 50, tzinfo=UTC),
    datetime(2027, 10, 27, 6, 0, tzinfo=UTC),
    datetime(2027, 6, 16, 12, 0, tzinfo=UTC),
]


def straightforward(
    session: Session, *, course_id: int, timezone: str, tier: int, now: datetime
) -> list[Offer]:
    """The rule as written: span_fits for every (trainer, time) over each eligible
    trainer's calendar with projections."""
    minutes = availability._course_minutes(session, course_id)
    eligible = [
        load.trainer_id for load in trainer_loads(session, course_id, now=now) if load.eligible
    ]
    calendars = trainer_calendars(session, eligible, now=now, with_projections=True, lock=False)
    found = []
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


def quarter(rng: random.Random, first: int = 0, last: int = 95) -> time:
    minute = 15 * rng.randint(first, last)
    return time(minute // 60, minute % 60)


def random_week(rng: random.Random) -> dict[int, tuple[time, time]]:
    """Mostly one window on working days, some days off or shifted, some weekends."""
    first = rng.randint(0, 60)  # quarters of an hour after midnight
    length = rng.randint(16, 60)
    week = {}
    for weekday in range(7):
        if rng.random() < (0.9 if weekday < 5 else 0.3):
            start = first + (rng.randint(-4, 4) if rng.random() < 0.3 else 0)
            start = max(0, start)
            end_minute = 15 * (start + length)
            ends = END_OF_DAY if end_minute >= 24 * 60 else time(end_minute // 60, end_minute % 60)
            week[weekday] = (time(start // 4, 15 * (start % 4)), ends)
    return week


def seed_catalogue(session: Session, rng: random.Random, now: datetime) -> int:
    course = make_course(session, session_minutes=rng.choice([30, 45, 60, 90]))
    other = make_course(session, title="Other")
    trainers = []
    for index in range(rng.randint(5, 8)):
        capacity = rng.randint(1, 6)
        trainer = make_trainer(
            session,
            [course] if index else [other],  # the first does not teach it
            max_students=capacity,
            is_active=rng.random() > 0.1,
            timezone=rng.choice(ZONES),
            working_hours=random_week(rng),
        )
        trainer.active_students = rng.randint(0, capacity)
        trainers.append(trainer)
    session.flush()
    booked: dict[int, list[tuple[datetime, datetime]]] = {t.id: [] for t in trainers}
    for trainer in trainers:
        for _ in range(rng.randint(0, 5)):
            add_allocation(session, rng, course, trainer.id, now, booked[trainer.id])
        for _ in range(rng.randint(0, 2)):
            add_hold(session, rng, course, trainer.id, now)
    session.flush()
    return course.id


def add_allocation(
    session: Session,
    rng: random.Random,
    course,
    trainer_id: int,
    now: datetime,
    booked: list[tuple[datetime, datetime]],
) -> None:
    zone = rng.choice(ZONES)
    student = make_student(session, timezone=zone)
    tier = rng.choice([10, 20, 30])
    slot = quarter(rng, 24, 88)
    status = rng.choice(["active", "active", "active", "approved", "completed", "cancelled"])
    payment = Payment(
        student_id=student.id,
        course_id=course.id,
        tier=tier,
        time_slot=slot,
        amount_cents=100,
        currency="EUR",
        status="succeeded",
    )
    session.add(payment)
    session.flush()
    purchase = Purchase(
        payment_id=payment.id,
        student_id=student.id,
        course_id=course.id,
        tier=tier,
        time_slot=slot,
        is_active=status in ("active", "approved"),
    )
    session.add(purchase)
    session.flush()
    allocation = Allocation(
        purchase_id=purchase.id,
        student_id=student.id,
        course_id=course.id,
        trainer_id=trainer_id,
        time_slot=slot,
        sessions_total=tier,
        status=status,
    )
    session.add(allocation)
    session.flush()
    # Some sessions done or cancelled in the past weeks, some scheduled from a day near
    # now (a few of a finished allocation's left scheduled too), never two of the
    # trainer's scheduled sessions at once.
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=rng.randint(0, 30))
    used = 0
    finished = status in ("completed", "cancelled")
    for day, starts_at, ends_at in occurrences(
        timezone=zone,
        slot=slot,
        minutes=course.session_minutes,
        after=first,
        now=datetime.min.replace(tzinfo=UTC),
    ):
        if used >= tier or day > today + timedelta(days=rng.randint(3, 20)):
            break
        if starts_at <= now:
            state = "cancelled" if rng.random() < 0.2 else "completed"
        elif (finished and rng.random() < 0.7) or overlapping(starts_at, ends_at, booked):
            continue
        else:
            state = "scheduled"
            booked.append((starts_at, ends_at))
        used += state != "cancelled"
        session.add(
            TutoringSession(
                allocation_id=allocation.id,
                student_id=student.id,
                trainer_id=trainer_id,
                scheduled_date=day,
                scheduled_time=slot,
                starts_at=starts_at,
                ends_at=ends_at,
                status=state,
            )
        )
    session.flush()


def overlapping(
    starts_at: datetime, ends_at: datetime, booked: list[tuple[datetime, datetime]]
) -> bool:
    return any(start < ends_at and end > starts_at for start, end in booked)


def add_hold(session: Session, rng: random.Random, course, trainer_id: int, now: datetime) -> None:
    zone = rng.choice(ZONES)
    student = make_student(session, timezone=zone)
    session.add(
        Hold(
            payment_id=uuid.uuid4(),
            student_id=student.id,
            course_id=course.id,
            trainer_id=trainer_id,
            time_slot=quarter(rng, 24, 88),
            timezone=zone,
            session_minutes=rng.choice([30, 60]),
            sessions=rng.choice([10, 20, 30]),
            starts_after=now.date() - timedelta(days=rng.randint(0, 2)),
            status=rng.choice(["held", "held", "held", "released", "converted"]),
            expires_at=now + timedelta(minutes=rng.choice([-5, 10, 15])),
        )
    )


@pytest.mark.parametrize("seed", range(12))
def test_offers_are_span_fits_for_every_trainer_and_time(db_session: Session, seed: int):
    rng = random.Random(seed)
    now = NOWS[seed % len(NOWS)]
    course_id = seed_catalogue(db_session, rng, now)
    # One snapshot read at `now` answers every zone and tier (its masks kept per spans).
    snapshot = availability.read_calendar_snapshot(db_session, course_id, now=now)
    for timezone in rng.sample(ZONES, 3):
        for tier in (10, 20, 30):
            expected = straightforward(
                db_session, course_id=course_id, timezone=timezone, tier=tier, now=now
            )
            got = availability.offers(
                db_session, course_id=course_id, timezone=timezone, tier=tier, now=now
            )
            assert got == expected, (timezone, tier)
            for _ in range(2):  # masks worked out, then kept
                kept = availability.offers(
                    db_session,
                    course_id=course_id,
                    timezone=timezone,
                    tier=tier,
                    now=now,
                    snapshot=snapshot,
                )
                assert kept == expected, (timezone, tier, "snapshot")


def test_the_catalogues_are_not_trivial(db_session: Session):
    """The random catalogues offer times, and booked time takes some away: a comparison
    of two empty answers, or of answers no booking changed, would prove nothing."""
    offered = taken = 0
    for seed in range(12):
        rng = random.Random(seed)
        now = NOWS[seed % len(NOWS)]
        course_id = seed_catalogue(db_session, rng, now)
        minutes = availability._course_minutes(db_session, course_id)
        eligible = [
            load.trainer_id
            for load in trainer_loads(db_session, course_id, now=now)
            if load.eligible
        ]
        calendars = trainer_calendars(
            db_session, eligible, now=now, with_projections=True, lock=False
        )
        for slot in grid():
            span = tier_span(Wanted(course_id, "Europe/Berlin", slot, minutes, 10), now)
            for calendar in calendars.values():
                if span_fits(span, hours=calendar.hours, busy=Busy()):
                    offered += 1
                    taken += not span_fits(span, hours=calendar.hours, busy=calendar.busy)
    assert offered > 100
    assert taken > 10


def test_spans_kept_per_day_are_the_spans_of_now():
    """grid_spans keeps a day's spans; a `now` late in the day gets the same spans as
    tier_span computes, and a span whose first session is already past is not reused."""
    for now in [*NOWS, datetime(2027, 3, 13, 23, 59, tzinfo=UTC)]:
        for zone in ZONES:
            spans = availability.grid_spans(zone, 45, 10, now)
            for slot, span in zip(grid(), spans.spans, strict=True):
                assert span == tier_span(Wanted(1, zone, slot, 45, 10), now)
    assert date(2027, 3, 13).weekday() == 5
