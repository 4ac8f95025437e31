"""What a course can be bought at: the times of day a trainer can serve the whole tier."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from actions import availability
from app.auth import STUDENT_SECURITY, student_or_admin
from app.runtime import runtime
from app.schemas import AvailabilityOut, AvailabilityQuery, ErrorOut

blp = Blueprint(
    "availability", __name__, description="The times a course can be bought at (any token)."
)


@blp.route("/courses/<int(max=9223372036854775807):course_id>/availability", methods=["GET"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.arguments(AvailabilityQuery, location="query")
@blp.response(200, AvailabilityOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(422, schema=ErrorOut)
def course_availability(query: dict[str, Any], course_id: int):
    """The local times of day (in the student's `timezone`) at which weekday sessions of
    the course can be served for the tier's whole span — inside an active trainer's
    working hours on every date (DST on both sides), with a place, free of the trainer's
    other sessions and of checkouts' holds — with the places at each. Checkout accepts
    only such a time."""
    found = runtime()
    return availability.course_availability(
        found.database,
        found.availability,
        course_id=course_id,
        timezone=query["timezone"],
        tier=query["tier"],
    )
