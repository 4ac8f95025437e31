"""Session calendar rules: weekdays only, the student's timezone, window and tier, the
trainer's working hours in the trainer's timezone, booked intervals."""

from datetime import UTC, date, datetime, time, timedelta

import pytest

from domain.calendar import (
    DEFAULT_WORKING_DAYS,
    Busy,
    ShiftReason,
    WorkingHours,
    plan_window,
    session_start,
    sessions_needed,
    span_fits,
    tier_span,
    weekdays_after,
)


def plan_sessions(*, busy: Busy | None = None, hours: WorkingHours | None = None, **kwargs):
    return plan_window(minutes=60, busy=busy or Busy(), hours=hours, **kwargs).sessions


FRIDAY = date(2026, 11, 27)
MONDAY = date(2026, 11, 30)


def test_weekdays_after_skips_weekends():
    days = list(zip(range(6), weekdays_after(FRIDAY), strict=False))
    assert [d for _, d in days] == [
        date(2026, 11, 30),
        date(2026, 12, 1),
        date(2026, 12, 2),
        date(2026, 12, 3),
        date(2026, 12, 4),
        date(2026, 12, 7),
    ]


def test_first_session_is_the_next_weekday_never_today():
    now = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # Monday morning, slot still ahead
    planned = plan_sessions(
        now=now, timezone="Europe/Berlin", slot=time(17, 30), count=1, last_scheduled=None
    )
    assert planned[0].scheduled_date == date(2026, 11, 24)


def test_seven_sessions_from_a_friday_skip_the_weekend():
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    planned = plan_sessions(
        now=now, timezone="Europe/Berlin", slot=time(9, 0), count=7, last_scheduled=None
    )
    dates = [p.scheduled_date for p in planned]
    assert len(dates) == 7
    assert all(d.weekday() < 5 for d in dates)
    assert dates[0] == MONDAY
    assert dates[-1] == date(2026, 12, 8)


def test_timezone_decides_what_today_is():
    # 23:30 UTC on Friday is already Saturday in Tokyo: next weekday there is Monday,
    # and 09:00 Tokyo on Monday is Monday 00:00 UTC.
    now = datetime(2026, 11, 27, 23, 30, tzinfo=UTC)
    [tokyo] = plan_sessions(
        now=now, timezone="Asia/Tokyo", slot=time(9, 0), count=1, last_scheduled=None
    )
    assert tokyo.scheduled_date == MONDAY
    assert tokyo.starts_at == datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    # Still Friday in New York: its next weekday is the same Monday, at 14:00 UTC.
    [new_york] = plan_sessions(
        now=now, timezone="America/New_York", slot=time(9, 0), count=1, last_scheduled=None
    )
    assert new_york.starts_at == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)


def test_session_start_follows_daylight_saving():
    winter = session_start(date(2026, 1, 15), time(10, 0), "Europe/Berlin")
    summer = session_start(date(2026, 7, 15), time(10, 0), "Europe/Berlin")
    assert (winter.hour, summer.hour) == (9, 8)


def test_top_up_continues_after_the_last_scheduled_session():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    planned = plan_sessions(
        now=now, timezone="UTC", slot=time(9, 0), count=2, last_scheduled=date(2026, 12, 4)
    )
    assert [p.scheduled_date for p in planned] == [date(2026, 12, 7), date(2026, 12, 8)]


def test_a_booked_interval_moves_the_session_to_the_next_free_weekday():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    # Another student's 08:30-09:30 on Tuesday overlaps a 09:00 session that day.
    taken = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
    plan = plan_window(
        now=now,
        timezone="UTC",
        slot=time(9, 0),
        minutes=60,
        count=2,
        last_scheduled=None,
        busy=Busy([(taken, taken + timedelta(hours=1))]),
    )
    assert [p.scheduled_date for p in plan.sessions] == [date(2026, 11, 25), date(2026, 11, 26)]
    assert [(s.wanted, s.got, s.reason) for s in plan.shifts] == [
        (date(2026, 11, 24), date(2026, 11, 25), ShiftReason.TRAINER_BUSY)
    ]


def test_sessions_that_merely_touch_do_not_overlap():
    ten = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    busy = Busy([(ten - timedelta(hours=1), ten)])
    assert not busy.overlaps(ten, ten + timedelta(hours=1))
    assert busy.overlaps(ten - timedelta(minutes=1), ten + timedelta(hours=1))
    # A long interval long before is still found.
    busy.add(ten - timedelta(hours=5), ten - timedelta(hours=1, minutes=30))
    assert busy.overlaps(ten - timedelta(hours=2), ten - timedelta(hours=1, minutes=45))


def test_working_hours_are_read_in_the_trainers_timezone():
    hours = WorkingHours("America/New_York", DEFAULT_WORKING_DAYS)
    # 13:00-14:00 UTC on a winter Monday is 08:00-09:00 in New York: inside.
    start = datetime(2026, 11, 30, 13, 0, tzinfo=UTC)
    assert hours.contains(start, start + timedelta(hours=1))
    # An hour earlier is 07:00 there: outside; so is 19:30-20:30.
    assert not hours.contains(start - timedelta(hours=1), start)
    late = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    assert not hours.contains(late, late + timedelta(hours=1))
    # Saturday is a day off.
    saturday = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    assert not hours.contains(saturday, saturday + timedelta(hours=1))


def test_slot_fits_only_when_every_session_of_the_tier_is_inside_the_hours():
    now = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    london = WorkingHours("Europe/London", {d: (time(8), time(18)) for d in range(5)})
    # 12:00-13:00 in New York is 17:00-18:00 in London (16:00-17:00 between the US
    # change on 14 March 2027 and the UK one on 28 March): always inside. 13:00 New York
    # is 17:00 London in those two weeks, but 18:00 before them: one session outside
    # is enough to refuse.
    fits = {
        slot: slot_fits(
            now=now,
            timezone="America/New_York",
            slot=slot,
            minutes=60,
            count=30,
            busy=Busy(),
            hours=london,
        )
        for slot in (time(12), time(13))
    }
    assert fits == {time(12): True, time(13): False}


@pytest.mark.parametrize(
    ("future", "used", "total", "expected"),
    [
        (0, 0, 10, 7),  # fresh allocation: the full window
        (2, 5, 10, 5),  # window wants 5, tier allows 5
        (2, 8, 10, 2),  # tier allows only 2 more: never an 11th session
        (0, 10, 10, 0),  # tier used up
        (7, 7, 30, 0),  # window full
        (9, 9, 30, 0),  # never negative
    ],
)
def test_sessions_needed_fills_the_window_within_the_tier(future, used, total, expected):
    assert sessions_needed(future=future, used=used, total=total, window=7) == expected


def slot_fits(*, now, timezone, slot, minutes, count, busy, hours) -> bool:
    """The allocation's rule for one slot: the tier's span, each session inside the hours
    and free in `busy` (calendar.span_fits over calendar.tier_span)."""
    span = tier_span(now=now, timezone=timezone, slot=slot, minutes=minutes, count=count)
    return span_fits(span, hours=hours, busy=busy)
