"""The times a course can be bought at: inside a trainer's working hours on every date of
the tier's span, in real instants (DST on either side), free of other students' time,
with a place; the endpoint's bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from domain import availability
from domain.calendar import Busy, WorkingHours, plan_window
from models import Hold, Payment
from tests.conftest import ADMIN, student_auth
from tests.factories import make_allocation, make_course, make_student, make_trainer

EVERY_DAY_8_TO_20 = {weekday: (time(8, 0), time(20, 0)) for weekday in range(7)}


def offered(session, course, timezone: str, tier: int, now: datetime) -> set[str]:
    found = availability.offers(session, course_id=course.id, timezone=timezone, tier=tier, now=now)
    return {f"{offer.slot:%H:%M}" for offer in found}


def test_a_time_inside_hours_only_while_the_zones_dst_differ_is_offered_only_for_spans_inside(
    db_session,
):
    """New York moves to summer time two weeks before Berlin (14 and 28 March 2027).
    At 14:00 in New York a Berlin trainer working to 20:00 is free in those two weeks
    (19:00 Berlin) and not after (20:00): a 10-session tier inside them is offered it, a
    20-session tier that runs past 28 March is not."""
    course = make_course(db_session)
    make_trainer(db_session, [course], timezone="Europe/Berlin", working_hours=EVERY_DAY_8_TO_20)
    now = datetime(2027, 3, 14, 12, 0, tzinfo=UTC)  # Sunday, after New York's change

    ten = offered(db_session, course, "America/New_York", 10, now)
    twenty = offered(db_session, course, "America/New_York", 20, now)

    assert "14:00" in ten and "14:00" not in twenty
    assert "13:00" in ten and "13:00" in twenty  # 18:00 or 19:00 in Berlin: always inside
    # Only the last three sessions of a span from 17 March fall after Berlin's change:
    # every session counts, the last as much as the first.
    late = offered(
        db_session, course, "America/New_York", 10, datetime(2027, 3, 17, 12, tzinfo=UTC)
    )
    assert "14:00" not in late and "13:00" in late
    assert "02:00" not in ten and "02:00" in offered(
        db_session, course, "America/New_York", 10, datetime(2027, 4, 4, 12, tzinfo=UTC)
    )  # 07:00 Berlin in the gap, 08:00 after it


def test_the_southern_hemispheres_change_counts_too(db_session):
    """Sydney leaves summer time on 4 April 2027: 06:00 there is 19:00 UTC before (an
    hour inside a UTC trainer's day ending at 20:00) and 20:00 UTC after."""
    course = make_course(db_session)
    make_trainer(db_session, [course], timezone="UTC", working_hours=EVERY_DAY_8_TO_20)
    now = datetime(2027, 3, 21, 0, 0, tzinfo=UTC)

    assert "06:00" in offered(db_session, course, "Australia/Sydney", 10, now)
    assert "06:00" not in offered(db_session, course, "Australia/Sydney", 20, now)
    # 19:00 in Sydney is 08:00 UTC before the change, 09:00 after: inside all along.
    assert "19:00" in offered(db_session, course, "Australia/Sydney", 30, now)


def test_another_students_time_and_a_full_trainer_are_not_offered(db_session):
    course = make_course(db_session)
    trainer = make_trainer(
        db_session, [course], timezone="UTC", working_hours=EVERY_DAY_8_TO_20, max_students=2
    )
    now = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    make_allocation(db_session, course, slot=time(10, 0), now=now, timezone="UTC", tier=10)

    times = offered(db_session, course, "UTC", 10, now)
    assert {"09:00", "11:00"} <= times
    assert not {"09:15", "09:45", "10:00", "10:45"} & times  # an hour meeting 10:00-11:00

    trainer.active_students = 2  # full
    db_session.flush()
    assert offered(db_session, course, "UTC", 10, now) == set()


ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Santiago",
    "Australia/Sydney",
    "Australia/Lord_Howe",  # a half-hour DST change
    "Pacific/Auckland",
    "Pacific/Chatham",  # +12:45 / +13:45
    "Asia/Kolkata",
    "Asia/Tokyo",
]


@cache
def _changes() -> list[date]:
    """The days some zone of ZONES changes its UTC offset, 2026 to 2028."""
    found: set[date] = set()
    day = date(2026, 1, 1)
    while day < date(2029, 1, 1):
        for zone in ZONES:
            at = ZoneInfo(zone)
            noon = datetime.combine(day, time(12), tzinfo=at)
            if noon.utcoffset() != (noon + timedelta(days=1)).utcoffset():
                found.add(day)
        day += timedelta(days=1)
    return sorted(found)


@st.composite
def near_a_change(draw) -> date:
    """A day up to seven weeks before a DST change (a tier's span is at most six weeks
    and a bit): the change falls anywhere in the span, its last sessions included."""
    return draw(st.sampled_from(_changes())) - timedelta(days=draw(st.integers(0, 50)))


@st.composite
def working_week(draw) -> dict[int, tuple[time, time]]:
    days = draw(st.sets(st.integers(0, 6), min_size=1))
    week = {}
    for day in days:
        start = draw(st.integers(0, 22 * 4))
        end = draw(st.integers(start + 4, 24 * 4))
        week[day] = (time(start // 4, 15 * (start % 4)), _quarter(end))
    return week


def _quarter(quarters: int) -> time:
    return time.max if quarters == 24 * 4 else time(quarters // 4, 15 * (quarters % 4))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    trainer_zone=st.sampled_from(ZONES),
    student_zone=st.sampled_from(ZONES),
    week=working_week(),
    tier=st.sampled_from([10, 20, 30]),
    minutes=st.sampled_from([30, 45, 60, 90]),
    day=near_a_change(),
    hour=st.integers(0, 23),
)
def test_every_offered_time_is_planned_inside_the_trainers_hours_without_a_shift(
    db_session, trainer_zone, student_zone, week, tier, minutes, day, hour
):
    """For random zones, hours and dates: a time is offered exactly when the planner
    (what the allocation and scheduling do) places the tier's sessions on its first
    weekdays, each inside the trainer's working hours — no shift, nothing unplaced."""
    now = datetime.combine(day, time(hour), tzinfo=UTC)
    savepoint = db_session.begin_nested()
    try:
        course = make_course(db_session, session_minutes=minutes)
        make_trainer(db_session, [course], timezone=trainer_zone, working_hours=week)
        times = offered(db_session, course, student_zone, tier, now)
    finally:
        savepoint.rollback()
    hours = WorkingHours(trainer_zone, week)
    for slot in availability.grid():
        plan = plan_window(
            now=now,
            timezone=student_zone,
            slot=slot,
            minutes=minutes,
            count=tier,
            last_scheduled=None,
            busy=Busy(),
            hours=hours,
        )
        clean = not plan.shifts and plan.unplaced == 0
        if f"{slot:%H:%M}" in times:
            assert clean, (slot, plan.shifts)
            assert all(hours.contains(s.starts_at, s.ends_at) for s in plan.sessions)
            first_days = _weekdays_after(now.astimezone(ZoneInfo(student_zone)).date(), tier)
            assert [s.scheduled_date for s in plan.sessions] == first_days
        else:
            assert not clean, slot


def _weekdays_after(day: date, count: int) -> list[date]:
    found = []
    while len(found) < count:
        day += timedelta(days=1)
        if day.weekday() < 5:
            found.append(day)
    return found


# --- the endpoint's bad input ------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"timezone": "Mars/Olympus", "tier": 10}, 422, "validation_error"),
        ({"timezone": "Europe/Berlin", "tier": 15}, 422, "validation_error"),
        ({"timezone": "Europe/Berlin", "tier": "ten"}, 422, "validation_error"),
        ({"tier": 10}, 422, "validation_error"),
        ({"timezone": "Europe/Berlin"}, 422, "validation_error"),
    ],
)
def test_bad_availability_queries_are_a_clear_422(client, db_session, query, status, code):
    course = make_course(db_session)
    response = client.get(
        f"/api/v1/courses/{course.id}/availability", query_string=query, headers=ADMIN
    )
    assert response.status_code == status, response.json
    assert response.json["error"]["code"] == code


def test_availability_of_an_unknown_course_is_404_and_needs_a_token(client, db_session):
    query = {"timezone": "UTC", "tier": 10}
    unknown = client.get("/api/v1/courses/999999/availability", query_string=query, headers=ADMIN)
    assert unknown.status_code == 404
    assert unknown.json["error"]["code"] == "unknown_course"
    course = make_course(db_session)
    anonymous = client.get(f"/api/v1/courses/{course.id}/availability", query_string=query)
    assert anonymous.status_code == 401
    student = make_student(db_session)
    as_student = client.get(
        f"/api/v1/courses/{course.id}/availability",
        query_string=query,
        headers=student_auth(student.id),
    )
    assert as_student.status_code == 200
    assert as_student.json == {
        "course_id": course.id,
        "timezone": "UTC",
        "tier": 10,
        "session_minutes": 60,
        "step_minutes": 15,
        "times": [],
    }


@pytest.mark.parametrize("slot", ["25:00", "7:30", "17:30:00", "", 1730, None])
def test_a_malformed_time_at_checkout_is_422_and_writes_nothing(client, db_session, slot):
    course = make_course(db_session)
    make_trainer(db_session, [course])
    student = make_student(db_session)
    response = client.post(
        "/api/v1/payments",
        json={"course_id": course.id, "tier": 10, "time_slot": slot},
        headers=student_auth(student.id),
    )
    assert response.status_code == 422
    assert "time_slot" in str(response.json["error"])
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 0
    assert db_session.scalar(select(func.count()).select_from(Hold)) == 0


def test_the_locked_check_counts_a_trainers_live_holds_and_activity(db_session):
    """claim_trainer decides, under the trainer's lock, whether a place is free as
    trainer_loads counts places: a live hold takes one (but the hold being turned into
    its allocation), an expired hold none, and an inactive trainer has none. Without a
    race, find_trainer's unlocked prefilter refuses such a trainer first; when
    checkouts race, this check is the one that decides."""
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course], max_students=1, working_hours=EVERY_DAY_8_TO_20)
    first, second = make_student(db_session, "UTC"), make_student(db_session, "UTC")
    now = datetime(2027, 5, 3, 6, 0, tzinfo=UTC)
    hold = availability.place_hold(
        db_session,
        payment_id=uuid.uuid4(),
        student_id=first.id,
        course_id=course.id,
        tier=10,
        slot=time(9, 0),
        now=now,
        hold_minutes=15,
    )
    assert hold.trainer_id == trainer.id
    later = availability.Wanted(course.id, second.timezone, time(15, 0), 60, 10)  # time free

    def claims(at: datetime, **leave_out: uuid.UUID) -> bool:
        return availability.claim_trainer(db_session, trainer.id, later, now=at, **leave_out)

    assert not claims(now)  # the only place is held
    assert claims(now, leave_out_hold=hold.payment_id)
    assert claims(now + timedelta(minutes=16))  # the hold expired
    trainer.is_active = False
    db_session.flush()
    assert not claims(now + timedelta(minutes=16))
