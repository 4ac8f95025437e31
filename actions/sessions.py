"""A scheduled session completed or cancelled, one transaction each."""

from __future__ import annotations

from domain import sessions
from domain.clock import utcnow
from models import Database, TutoringSession


def complete(database: Database, session_id: int) -> TutoringSession:
    with database.transaction() as session:
        return sessions.complete_session(session, session_id, now=utcnow())


def cancel(database: Database, session_id: int) -> TutoringSession:
    with database.transaction() as session:
        return sessions.cancel_session(session, session_id, now=utcnow())
