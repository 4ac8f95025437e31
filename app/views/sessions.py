"""A session's life after scheduling (admin: the trainer's back office)."""

from __future__ import annotations

from flask_smorest import Blueprint

from actions import sessions
from app.auth import ADMIN_SECURITY, admin_only
from app.runtime import runtime
from app.schemas import ErrorOut, SessionOut

blp = Blueprint("sessions", __name__, description="Complete or cancel a tutoring session.")
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
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.response(200, SessionOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def cancel(session_id: int):
    return sessions.cancel(runtime().database, session_id)
