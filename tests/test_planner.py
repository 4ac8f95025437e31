"""One planner for the chain and the top-up: a clash moves a session to the next free
weekday and says so; nothing is dropped, no instant is booked twice."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from domain.calendar import SATURDAY, plan_window
from domain.events import EventType
from models import DomainEvent, Trainer, TutoringSession
from tests.test_beat import MONDAY, allocate, future, top_up_all

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


@settings(max_examples=200, deadline=None)
@given(
    allocations=st.lists(
        st.tuples(st.sampled_from(ZONES), st.sampled_from(SLOTS), st.integers(1, 10)),
        min_size=1,
        max_size=4,
    ),
    # Across the DST changes of both hemispheres (March/April, October/November).
    day=st.integers(0, 330),
    hour=st.integers(0, 23),
)
def test_one_trainers_allocations_planned_in_turn_never_share_an_instant(allocations, day, hour):
    now = datetime(2026, 1, 1, hour, tzinfo=UTC) + timedelta(days=day)
    busy: set[datetime] = set()
    seen: list[datetime] = []
    for zone, slot, count in allocations:
        before = set(busy)
        plan = plan_window(
            now=now, timezone=zone, slot=slot, count=count, last_scheduled=None, busy=busy
        )
        assert len(plan.sessions) == count  # never fewer than asked: nothing dropped
        for planned in plan.sessions:
            assert planned.starts_at > now
            assert planned.starts_at not in before
            local = planned.starts_at.astimezone(ZoneInfo(zone))
            assert local.weekday() < SATURDAY
            assert local.date() == planned.scheduled_date
        for shift in plan.shifts:  # a shift is reported exactly for a busy date
            wanted = datetime.combine(shift.wanted, slot, tzinfo=ZoneInfo(zone))
            assert wanted.astimezone(UTC) in before
            assert shift.got > shift.wanted
        seen.extend(p.starts_at for p in plan.sessions)
    assert len(seen) == len(set(seen))


def shifted(session, allocation_id: int) -> int:
    return session.scalar(
        select(func.count()).where(
            DomainEvent.event_type == EventType.SESSION_SHIFTED,
            DomainEvent.payload["allocation_id"].as_integer() == allocation_id,
        )
    )


def test_berlin_at_18_and_utc_at_17_with_one_trainer_both_get_every_session(db_session):
    """The regression from issue 14, as far as the planner goes: in winter 18:00 in
    Berlin is 17:00 UTC. The chain shifts the second student's clashing dates (and says
    so) instead of retrying; the top-up later does the same instead of dropping them."""
    berlin = allocate(db_session, timezone="Europe/Berlin", slot=time(18, 0))
    utc = allocate(
        db_session,
        timezone="UTC",
        slot=time(17, 0),
        trainer=db_session.get_one(Trainer, berlin.trainer_id),
    )
    assert utc.trainer_id == berlin.trainer_id
    for allocation in (berlin, utc):
        assert len(future(db_session, allocation.id, MONDAY)) == 7
    assert shifted(db_session, utc.id) > 0

    later = MONDAY + timedelta(days=7, hours=6)
    top_up_all(db_session, later)
    for allocation in (berlin, utc):
        assert len(future(db_session, allocation.id, later)) == 7
    instants = db_session.scalars(
        select(TutoringSession.starts_at).where(
            TutoringSession.trainer_id == berlin.trainer_id,
            TutoringSession.status == "scheduled",
        )
    ).all()
    assert len(instants) == len(set(instants))
    assert shifted(db_session, berlin.id) > 0  # the top-up met the other's sessions too
