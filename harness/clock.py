"""Time travel for tests and benchmarks: a clock that stands where it is put, installed
as the application's clock (domain/clock.py) for as long as the block runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from domain import clock


class TravellingClock:
    """The real time until `travel_to` a moment; there it stands still until moved
    again (None: back to the real time)."""

    def __init__(self, moment: datetime | None = None) -> None:
        self.moment: datetime | None = None
        self.travel_to(moment)

    def now(self) -> datetime:
        return self.moment if self.moment is not None else datetime.now(UTC)

    def travel_to(self, moment: datetime | None) -> None:
        if moment is not None and moment.tzinfo is None:
            raise ValueError("travel_to needs an aware datetime")
        self.moment = moment


@contextmanager
def travelling_clock() -> Iterator[TravellingClock]:
    """The application reads a `TravellingClock` until the block ends."""
    travelling = TravellingClock()
    previous = clock.install(travelling)
    try:
        yield travelling
    finally:
        clock.install(previous)
