"""The one clock the domain reads. Tests move it with `travel_to`; nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime

_fixed: datetime | None = None


def utcnow() -> datetime:
    return _fixed if _fixed is not None else datetime.now(UTC)


def travel_to(moment: datetime | None) -> None:
    """Freeze the clock at `moment` (aware); None returns to real time."""
    global _fixed
    if moment is not None and moment.tzinfo is None:
        raise ValueError("travel_to needs an aware datetime")
    _fixed = moment
