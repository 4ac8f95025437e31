"""Session calendar maths: weekdays in the student's timezone, real instants, a rolling
window, a trainer's working hours in the trainer's timezone.

Pure functions: no database, no clock. Callers pass `now`. Instants are compared as
instants (UTC-aware datetimes); wall clocks appear only where a person reads them: the
student's slot and the trainer's working hours.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from itertools import islice
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
class WorkingHours:
    """A trainer's week: weekday (0 = Monday) → (start, end) wall-clock times in
    `timezone`. A weekday without an entry is a day off."""

    timezone: str
    days: Mapping[int, tuple[time, time]]

    def contains(self, starts_at: datetime, ends_at: datetime) -> bool:
        """Whether the trainer works the whole interval: both ends on one local day,
        inside that weekday's window (DST is the zone's business: the wall clock of
        each instant is what counts)."""
        zone = ZoneInfo(self.timezone)
        # The last moment inside the interval: a session ending at midnight ends on
        # its own day (a window may end at END_OF_DAY, "24:00").
        start, last = starts_at.astimezone(zone), (ends_at - _TICK).astimezone(zone)
        window = self.days.get(start.weekday())
        if window is None or start.date() != last.date() or start.time() < window[0]:
            return False
        return last.time() < window[1] or window[1] == END_OF_DAY


END_OF_DAY = time.max  # "24:00" as a working day's end
_TICK = timedelta(microseconds=1)

DEFAULT_WORKING_DAYS: dict[int, tuple[time, time]] = {
    weekday: (time(8, 0), time(20, 0)) for weekday in range(SATURDAY)
}


class Busy:
    """One trainer's booked intervals, for "is [start, end) free?" in O(log n).

    Intervals may overlap one another (projections of two allocations can); a query
    looks only at intervals starting within the longest length before its end.
    """

    def __init__(self, intervals: Iterable[tuple[datetime, datetime]] = ()) -> None:
        self._intervals: list[tuple[datetime, datetime]] = sorted(intervals)
        self._longest = max((end - start for start, end in self._intervals), default=_ZERO)

    def __len__(self) -> int:
        return len(self._intervals)

    def __iter__(self) -> Iterator[tuple[datetime, datetime]]:
        return iter(self._intervals)

    def overlaps(self, starts_at: datetime, ends_at: datetime) -> bool:
        low = bisect_right(self._intervals, (starts_at - self._longest, _MAX))
        high = bisect_left(self._intervals, (ends_at, _MIN))
        return any(end > starts_at for _, end in self._intervals[low:high])

    def add(self, starts_at: datetime, ends_at: datetime) -> None:
        insort(self._intervals, (starts_at, ends_at))
        self._longest = max(self._longest, ends_at - starts_at)


_ZERO = timedelta(0)
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)

# How far past its first wanted date the planner looks for a free weekday: a slot
# that fits nowhere in eight weeks needs another trainer, not a longer search.
SEARCH_DAYS = 56


@dataclass(frozen=True)
class PlannedSession:
    scheduled_date: date
    scheduled_time: time
    starts_at: datetime
    ends_at: datetime


def sessions_needed(*, future: int, used: int, total: int, window: int) -> int:
    """How many sessions to add: fill the window of future ones, never past the tier."""
    return max(0, min(window - future, total - used))


class ShiftReason(StrEnum):
    TRAINER_BUSY = "trainer_busy"
    OUTSIDE_WORKING_HOURS = "outside_working_hours"
    TRAINER_CHANGED = "trainer_changed"


@dataclass(frozen=True)
class Shift:
    """A session that could not take its date (the trainer is busy then, or does not
    work then) and moved to the next free weekday."""

    wanted: date
    got: date
    reason: ShiftReason = ShiftReason.TRAINER_BUSY


@dataclass(frozen=True)
class Plan:
    sessions: list[PlannedSession]
    shifts: list[Shift]
    # Sessions no weekday within SEARCH_DAYS could take: the trainer cannot serve
    # this slot any more (a reallocation's job).
    unplaced: int = 0


def occurrences(
    *, timezone: str, slot: time, minutes: int, after: date, now: datetime
) -> Iterator[tuple[date, datetime, datetime]]:
    """(local date, start, end) of the slot on each weekday after `after`, in the
    future only, without end."""
    length = timedelta(minutes=minutes)
    for day in weekdays_after(after):
        starts_at = session_start(day, slot, timezone)
        if starts_at > now:
            yield day, starts_at, starts_at + length


def plan_window(
    *,
    now: datetime,
    timezone: str,
    slot: time,
    minutes: int,
    count: int,
    last_scheduled: date | None,
    busy: Busy,
    hours: WorkingHours | None = None,
) -> Plan:
    """The one planner of the chain, the beat top-up and a reallocation: the next
    `count` sessions on weekdays in the student's timezone, each overlapping none of
    `busy` (the trainer's other sessions) and inside the trainer's `hours`. A date that
    does not fit is not dropped: its session moves to the next free weekday, and the
    plan says so (a Shift). `busy` gains the planned intervals, so one trainer's
    allocations can be planned one after the other.
    """
    if count <= 0:
        return Plan([], [])
    sessions: list[PlannedSession] = []
    shifts: list[Shift] = []
    waiting: list[tuple[date, ShiftReason]] = []  # dates whose session looks for a free weekday
    today = now.astimezone(ZoneInfo(timezone)).date()
    start_after = max(today, last_scheduled) if last_scheduled else today
    give_up = start_after + timedelta(days=SEARCH_DAYS)
    for day, starts_at, ends_at in occurrences(
        timezone=timezone, slot=slot, minutes=minutes, after=start_after, now=now
    ):
        if day > give_up:
            break
        if hours is not None and not hours.contains(starts_at, ends_at):
            waiting.append((day, ShiftReason.OUTSIDE_WORKING_HOURS))
            continue
        if busy.overlaps(starts_at, ends_at):
            waiting.append((day, ShiftReason.TRAINER_BUSY))
            continue
        if waiting:
            wanted, reason = waiting.pop(0)
            shifts.append(Shift(wanted=wanted, got=day, reason=reason))
        sessions.append(PlannedSession(day, slot, starts_at, ends_at))
        busy.add(starts_at, ends_at)
        if len(sessions) == count:
            break
    return Plan(sessions, shifts, unplaced=count - len(sessions))


def tier_span(
    *, now: datetime, timezone: str, slot: time, minutes: int, count: int
) -> list[tuple[datetime, datetime]]:
    """The student's next `count` weekday sessions at `slot` in `timezone` (the whole
    tier, over the coming weeks, DST changes included): what a trainer must serve."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    upcoming = occurrences(timezone=timezone, slot=slot, minutes=minutes, after=today, now=now)
    return [(starts_at, ends_at) for _, starts_at, ends_at in islice(upcoming, count)]


def span_fits(
    span: Iterable[tuple[datetime, datetime]], *, hours: WorkingHours, busy: Busy
) -> bool:
    """Every interval of `span` inside the trainer's `hours` and free in `busy`: the one
    rule of what a trainer can serve (availability, checkout, allocation)."""
    return all(
        hours.contains(starts_at, ends_at) and not busy.overlaps(starts_at, ends_at)
        for starts_at, ends_at in span
    )


def projected(
    *,
    now: datetime,
    timezone: str,
    slot: time,
    minutes: int,
    count: int,
    after: date,
) -> list[tuple[datetime, datetime]]:
    """The next `count` intervals an allocation will book if nothing shifts: what the
    rest of a tier not yet on the calendar will claim of its trainer's time."""
    found: list[tuple[datetime, datetime]] = []
    if count <= 0:
        return found
    for _, starts_at, ends_at in occurrences(
        timezone=timezone, slot=slot, minutes=minutes, after=after, now=now
    ):
        found.append((starts_at, ends_at))
        if len(found) == count:
            break
    return found
