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


@dataclass(frozen=True)
class Shift:
    """A session that could not take its date (the trainer is busy at that instant)
    and moved to the next free weekday."""

    wanted: date
    got: date
    reason: str = "trainer_busy"


@dataclass(frozen=True)
class Plan:
    sessions: list[PlannedSession]
    shifts: list[Shift]


def plan_window(
    *,
    now: datetime,
    timezone: str,
    slot: time,
    count: int,
    last_scheduled: date | None,
    busy: set[datetime],
) -> Plan:
    """The one planner of the chain and the beat top-up: the next `count` sessions on
    weekdays in the student's timezone, never at an instant in `busy` (the trainer's
    other scheduled sessions). A date whose instant is busy is not dropped: its session
    moves to the next free weekday, and the plan says so (a Shift). `busy` gains the
    planned instants, so one trainer's allocations can be planned one after the other.
    """
    sessions: list[PlannedSession] = []
    shifts: list[Shift] = []
    waiting: list[date] = []  # dates whose session still looks for a free weekday
    if count <= 0:
        return Plan([], [])
    today = now.astimezone(ZoneInfo(timezone)).date()
    start_after = max(today, last_scheduled) if last_scheduled else today
    for day in weekdays_after(start_after):
        starts_at = session_start(day, slot, timezone)
        if starts_at <= now:
            continue
        if starts_at in busy:
            waiting.append(day)
            continue
        if waiting:
            shifts.append(Shift(wanted=waiting.pop(0), got=day))
        sessions.append(PlannedSession(day, slot, starts_at))
        busy.add(starts_at)
        if len(sessions) == count:
            return Plan(sessions, shifts)
    return Plan(sessions, shifts)  # pragma: no cover - weekdays_after never ends


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
