"""A session's life after scheduling: its student moves or cancels it (24 hours ahead);
an operator completes or cancels it."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from actions import sessions
from app.auth import ADMIN_SECURITY, STUDENT_SECURITY, admin_only, caller, student_or_admin
from app.runtime import runtime
from app.schemas import ErrorOut, RescheduleIn, SessionOut

blp = Blueprint("sessions", __name__, description="Move, cancel or complete a tutoring session.")
ID = "<int(max=9223372036854775807):session_id>"


@blp.route(f"/sessions/{ID}/complete", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.response(200, SessionOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def complete(session_id: int):
    return sessions.complete(runtime().database, session_id)


@blp.route(f"/sessions/{ID}/cancel", methods=["POST"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.response(200, SessionOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def cancel(session_id: int):
    """A student cancels their own session at least 24 hours ahead (409 too_late after
    that); the top-up books a replacement within the tier."""
    return sessions.cancel(runtime().database, session_id, student_id=caller().student_id)


@blp.route(f"/sessions/{ID}/reschedule", methods=["POST"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.arguments(RescheduleIn)
@blp.response(200, SessionOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def reschedule(data: dict[str, Any], session_id: int):
    """Move a session to another instant at least 24 hours ahead, inside the trainer's
    working hours: 409 `too_late`, `outside_working_hours`, `slot_taken` or
    `student_busy` otherwise."""
    return sessions.reschedule(
        runtime().database,
        session_id,
        starts_at=data["starts_at"],
        student_id=caller().student_id,
    )
