"""The one clock the domain reads; tests replace `utcnow` to move time."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
