"""One planner for the chain and the top-up: a clash moves a session to the next free
weekday and says so; nothing is dropped, no instant is booked twice."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from domain.calendar import (
    SATURDAY,
    Busy,
    WorkingHours,
    plan_window,
    projected,
    sessions_needed,
)
from domain.errors import NoTrainerAvailable
from domain.events import EventType
from models import DomainEvent, Trainer, TutoringSession
from tests.test_beat import MONDAY, allocate, future, top_up_all
from tests.test_calendar import slot_fits

ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Auckland",
]
SLOTS = [time(h, m) for h in range(6, 22) for m in (0, 30)]
LENGTHS = [30, 45, 60, 90]


TIER = 10
WINDOW = 7


def admitted(students, trainer_zone, now):
    """The allocation rule and the planner, as the chain runs them for one trainer:
    each student the rule admits (calendar.slot_fits against the other admitted
    students' whole tiers) gets the first window planned."""
    hours = WorkingHours(trainer_zone, {d: (time(6), time(22)) for d in range(7)})
    claims, busy = Busy(), Busy()
    plans = []
    for zone, slot, minutes in students:
        if not slot_fits(
            now=now,
            timezone=zone,
            slot=slot,
            minutes=minutes,
            count=TIER,
            busy=claims,
            hours=hours,
        ):
            continue  # another trainer's student
        today = now.astimezone(ZoneInfo(zone)).date()
        for interval in projected(
            now=now, timezone=zone, slot=slot, minutes=minutes, count=TIER, after=today
        ):
            claims.add(*interval)
        plan = plan_window(
            now=now,
            timezone=zone,
            slot=slot,
            minutes=minutes,
            count=WINDOW,
            last_scheduled=None,
            busy=busy,
            hours=hours,
        )
        plans.append(((zone, slot, minutes), plan))
    return hours, busy, plans


STUDENTS = st.lists(
    st.tuples(st.sampled_from(ZONES), st.sampled_from(SLOTS), st.sampled_from(LENGTHS)),
    min_size=2,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    students=STUDENTS,
    trainer_zone=st.sampled_from(ZONES),
    # Across the DST changes of both hemispheres (March/April, October/November).
    day=st.integers(0, 330),
    hour=st.integers(0, 23),
)
def test_admitted_students_never_overlap_stay_inside_hours_and_keep_their_window_full(
    students, trainer_zone, day, hour
):
    now = datetime(2026, 1, 1, hour, tzinfo=UTC) + timedelta(days=day)
    hours, busy, plans = admitted(students, trainer_zone, now)
    everything = []
    for (zone, slot, _), plan in plans:
        assert len(plan.sessions) == WINDOW  # nothing dropped
        assert plan.shifts == []  # the rule admitted only a slot free for the whole tier
        for planned in plan.sessions:
            assert planned.starts_at > now
            assert hours.contains(planned.starts_at, planned.ends_at)
            local = planned.starts_at.astimezone(ZoneInfo(zone))
            assert local.weekday() < SATURDAY
            assert (local.date(), local.time()) == (planned.scheduled_date, slot)
        everything.extend((p.starts_at, p.ends_at) for p in plan.sessions)
    assert not _overlapping(everything)

    # A week later the top-up refills each window from the same busy calendar.
    later = now + timedelta(days=7)
    for (zone, slot, minutes), plan in plans:
        past = [p for p in plan.sessions if p.starts_at <= later]
        future = len(plan.sessions) - len(past)
        refill = plan_window(
            now=later,
            timezone=zone,
            slot=slot,
            minutes=minutes,
            count=sessions_needed(future=future, used=WINDOW, total=TIER, window=WINDOW),
            last_scheduled=plan.sessions[-1].scheduled_date,
            busy=busy,
            hours=hours,
        )
        assert future + len(refill.sessions) == min(WINDOW, TIER - len(past))
        assert refill.shifts == []
        everything.extend((p.starts_at, p.ends_at) for p in refill.sessions)
    assert not _overlapping(everything)


def _overlapping(intervals) -> bool:
    latest_end = None
    for start, end in sorted(intervals):
        if latest_end is not None and start < latest_end:
            return True
        latest_end = end if latest_end is None else max(latest_end, end)
    return False


@settings(max_examples=200, deadline=None)
@given(
    allocations=st.lists(
        st.tuples(
            st.sampled_from(ZONES),
            st.sampled_from(SLOTS),
            st.sampled_from(LENGTHS),
            st.integers(1, 10),
        ),
        min_size=1,
        max_size=4,
    ),
    day=st.integers(0, 330),
    hour=st.integers(0, 23),
)
def test_the_planner_never_drops_or_double_books_even_for_clashing_slots(allocations, day, hour):
    """Without the allocation rule (what a reschedule or a DST change can leave behind):
    clashing dates are shifted, never dropped, and every shift is reported."""
    now = datetime(2026, 1, 1, hour, tzinfo=UTC) + timedelta(days=day)
    busy = Busy()
    seen = []
    for zone, slot, minutes, count in allocations:
        before = Busy(busy)
        plan = plan_window(
            now=now,
            timezone=zone,
            slot=slot,
            minutes=minutes,
            count=count,
            last_scheduled=None,
            busy=busy,
        )
        assert len(plan.sessions) == count
        for planned in plan.sessions:
            assert planned.starts_at > now
            assert not before.overlaps(planned.starts_at, planned.ends_at)
        for shift in plan.shifts:  # a shift is reported exactly for a clashing date
            wanted = datetime.combine(shift.wanted, slot, tzinfo=ZoneInfo(zone)).astimezone(UTC)
            assert before.overlaps(wanted, wanted + timedelta(minutes=minutes))
            assert shift.got > shift.wanted
        seen.extend((p.starts_at, p.ends_at) for p in plan.sessions)
    assert not _overlapping(seen)


def shifted(session, allocation_id: int) -> int:
    return session.scalar(
        select(func.count()).where(
            DomainEvent.event_type == EventType.SESSION_SHIFTED,
            DomainEvent.payload["allocation_id"].as_integer() == allocation_id,
        )
    )


def test_berlin_at_18_and_utc_at_17_never_share_a_trainer_in_winter(db_session):
    """The regression from issue 14: in winter 18:00 in Berlin is 17:00 UTC. The second
    student is not given the first one's trainer (before, both got them and the top-up
    dropped the clashing dates); with no other trainer, the step waits (retries)."""
    berlin = allocate(db_session, timezone="Europe/Berlin", slot=time(18, 0))
    trainer = db_session.get_one(Trainer, berlin.trainer_id)
    with pytest.raises(NoTrainerAvailable):
        allocate(db_session, timezone="UTC", slot=time(17, 0), trainer=trainer)
    assert len(future(db_session, berlin.id, MONDAY)) == 7
    assert shifted(db_session, berlin.id) == 0


def test_berlin_at_18_and_utc_at_17_share_a_trainer_in_summer(db_session):
    """In summer 18:00 in Berlin is 16:00 UTC: the same pair fits one trainer, and both
    windows stay full through a top-up, nothing shifted, no instant booked twice."""
    june = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)  # a Monday; the tiers end before October
    berlin = allocate(db_session, timezone="Europe/Berlin", slot=time(18, 0), now=june)
    trainer = db_session.get_one(Trainer, berlin.trainer_id)
    utc = allocate(db_session, timezone="UTC", slot=time(17, 0), trainer=trainer, now=june)
    assert utc.trainer_id == berlin.trainer_id
    later = june + timedelta(days=7, hours=6)
    top_up_all(db_session, later)
    for allocation in (berlin, utc):
        assert len(future(db_session, allocation.id, later)) == 7
        assert shifted(db_session, allocation.id) == 0
    intervals = db_session.execute(
        select(TutoringSession.starts_at, TutoringSession.ends_at).where(
            TutoringSession.trainer_id == trainer.id, TutoringSession.status == "scheduled"
        )
    ).all()
    assert not _overlapping([tuple(i) for i in intervals])


def test_postgresql_refuses_overlapping_sessions_of_one_trainer(db_session):
    """The exclusion constraint, on its own: 17:00-18:00 and 17:30-18:30 with one
    trainer cannot both be scheduled, whatever wrote them; cancelled ones do not count."""
    allocation = allocate(db_session, timezone="UTC", slot=time(17, 0))
    first = future(db_session, allocation.id, MONDAY)[0]
    clash = {
        "allocation_id": allocation.id,
        "student_id": allocation.student_id,
        "trainer_id": allocation.trainer_id,
        "scheduled_date": first.scheduled_date,
        "scheduled_time": time(17, 30),
        "starts_at": first.starts_at + timedelta(minutes=30),
        "ends_at": first.ends_at + timedelta(minutes=30),
    }
    with (
        pytest.raises(IntegrityError, match="ex_sessions_trainer_overlap"),
        db_session.begin_nested(),
    ):
        db_session.execute(insert(TutoringSession).values(clash))
    first.status = "cancelled"
    db_session.flush()
    db_session.execute(insert(TutoringSession).values(clash))
