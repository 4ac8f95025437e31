"""Session calendar maths: weekdays only, in the student's timezone, a rolling window.

Pure functions: no database, no clock. Callers pass `now`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

SATURDAY = 5


def is_valid_timezone(name: str) -> bool:
    if name not in _known_timezones():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


_TIMEZONES: frozenset[str] | None = None


def _known_timezones() -> frozenset[str]:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = frozenset(available_timezones())
    return _TIMEZONES


def weekdays_after(day: date) -> Iterator[date]:
    """Monday-to-Friday dates strictly after `day`, in order, without end."""
    current = day
    while True:
        current += timedelta(days=1)
        if current.weekday() < SATURDAY:
            yield current


def session_start(day: date, slot: time, timezone: str) -> datetime:
    """The UTC instant of `slot` on `day` as a wall clock in `timezone` reads it.

    A slot that falls in a DST gap resolves as zoneinfo does (fold=0: the offset
    before the change), so every weekday still gets its session.
    """
    local = datetime.combine(day, slot, tzinfo=ZoneInfo(timezone))
    return local.astimezone(UTC)


@dataclass(frozen=True)
class PlannedSession:
    scheduled_date: date
    scheduled_time: time
    starts_at: datetime


def sessions_needed(*, future: int, used: int, total: int, window: int) -> int:
    """How many sessions to add: fill the window of future ones, never past the tier."""
    return max(0, min(window - future, total - used))


def plan_sessions(
    *,
    now: datetime,
    timezone: str,
    slot: time,
    count: int,
    last_scheduled: date | None,
    skip: frozenset[date] = frozenset(),
) -> list[PlannedSession]:
    """The next `count` weekday sessions for an allocation.

    They start on the weekday after today (in the student's timezone) or after the
    last session already scheduled, whichever is later, and lie strictly after `now`.
    `skip` holds dates that cannot be used (e.g. the trainer is booked then).
    """
    if count <= 0:
        return []
    today = now.astimezone(ZoneInfo(timezone)).date()
    start_after = max(today, last_scheduled) if last_scheduled else today
    planned: list[PlannedSession] = []
    for day in weekdays_after(start_after):
        if day in skip:
            continue
        starts_at = session_start(day, slot, timezone)
        if starts_at <= now:
            continue
        planned.append(PlannedSession(day, slot, starts_at))
        if len(planned) == count:
            return planned
    return planned  # pragma: no cover - weekdays_after never ends
