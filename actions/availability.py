"""What a course can be bought at, read in one transaction."""

from __future__ import annotations

from typing import Any

from domain import availability
from domain.clock import utcnow
from models import Course, Database


def course_availability(
    database: Database, *, course_id: int, timezone: str, tier: int
) -> dict[str, Any]:
    """The offered times of the course's tier in the student's zone (availability.offers)."""
    with database.transaction() as session:
        offers = availability.offers(
            session, course_id=course_id, timezone=timezone, tier=tier, now=utcnow()
        )
        minutes = session.get_one(Course, course_id).session_minutes
    return {
        "course_id": course_id,
        "timezone": timezone,
        "tier": tier,
        "session_minutes": minutes,
        "step_minutes": availability.SLOT_STEP_MINUTES,
        "times": offers,
    }
