"""A scheduled session moved, completed or cancelled, one transaction each."""

from __future__ import annotations

from datetime import datetime

from domain import sessions
from domain.clock import utcnow
from models import Database, TutoringSession


def complete(database: Database, session_id: int) -> TutoringSession:
    with database.transaction() as session:
        return sessions.complete_session(session, session_id, now=utcnow())


def cancel(database: Database, session_id: int, *, student_id: int | None) -> TutoringSession:
    """`student_id`: the caller when a student (their own session, 24 hours ahead)."""
    with database.transaction() as session:
        return sessions.cancel_session(session, session_id, now=utcnow(), student_id=student_id)


def reschedule(
    database: Database, session_id: int, *, starts_at: datetime, student_id: int | None
) -> TutoringSession:
    with database.transaction() as session:
        return sessions.reschedule_session(
            session, session_id, starts_at=starts_at, now=utcnow(), student_id=student_id
        )
