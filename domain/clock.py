"""The one clock the application reads: `utcnow()`, an aware UTC datetime.

It asks the installed `Clock`, the system's unless another is installed: tests and
benchmarks install one that stands still or moves as they say (harness/clock.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, aware."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


_installed: Clock = SystemClock()


def utcnow() -> datetime:
    return _installed.now()


def install(clock: Clock) -> Clock:
    """Read the time from `clock` from now on; the clock it replaces."""
    global _installed
    previous, _installed = _installed, clock
    return previous
