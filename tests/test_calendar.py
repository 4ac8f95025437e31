"""Session calendar rules: weekdays only, the student's timezone, window and tier."""

from datetime import UTC, date, datetime, time

import pytest

from domain.calendar import plan_sessions, session_start, sessions_needed, weekdays_after

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


def test_skipped_dates_are_not_used():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    planned = plan_sessions(
        now=now,
        timezone="UTC",
        slot=time(9, 0),
        count=2,
        last_scheduled=None,
        skip=frozenset({date(2026, 11, 24)}),
    )
    assert [p.scheduled_date for p in planned] == [date(2026, 11, 25), date(2026, 11, 26)]


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
