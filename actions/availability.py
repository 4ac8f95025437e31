"""What a course can be bought at, read in one transaction."""

from __future__ import annotations

from typing import Any

from core.snapshots import Snapshots
from domain import availability
from domain.clock import utcnow
from models import Database


def course_availability(
    database: Database,
    snapshots: Snapshots[availability.CalendarSnapshot],
    *,
    course_id: int,
    timezone: str,
    tier: int,
) -> dict[str, Any]:
    """The offered times of the course's tier in the student's zone (availability.offers),
    over the course's calendar snapshot (at most AVAILABILITY_SNAPSHOT_SECONDS old;
    places and holds read now)."""
    now = utcnow()
    with database.transaction() as session:
        minutes = availability.course_minutes(session, course_id)  # 404 before any read
        snapshot = None
        if snapshots.enabled:
            snapshot = snapshots.get(
                course_id,
                now,
                lambda previous: availability.read_calendar_snapshot(
                    session, course_id, now=now, previous=previous
                ),
            )
        offers = availability.offers(
            session, course_id=course_id, timezone=timezone, tier=tier, now=now, snapshot=snapshot
        )
    return {
        "course_id": course_id,
        "timezone": timezone,
        "tier": tier,
        "session_minutes": minutes,
        "step_minutes": availability.SLOT_STEP_MINUTES,
        "times": offers,
    }
