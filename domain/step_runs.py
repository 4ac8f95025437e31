"""A step's run, recorded in the step's own transaction: the operator's payment page
shows each step of the chain with its task id (Flower's link), its duration and its
trace (domain.operator_view)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.tracing import current_trace_id
from domain import inbox
from models import take_pending_events
from models.events import INSERT_EVENTS_SQL

# Plain SQL, as the inbox's statements (domain.inbox): it runs on every step of every
# payment. The table is models.StepRun's.
_INSERT = (
    "INSERT INTO step_runs (correlation_id, step, task_id, started_at, finished_at, trace_id)"
    " VALUES (:correlation_id, :step, :task_id, :started_at, :finished_at, :trace_id)"
)
# With the step's inbox row (domain.inbox.STORE_SQL: its result; the statement answers
# how many rows it stored, 0 for a duplicate) and the events it recorded
# (models.take_pending_events) in the same round trip: (inbox row?, events?).
_RECORD = {
    (False, False): text(_INSERT),
    (True, False): text(
        f"WITH stored AS ({inbox.STORE_SQL}), run AS ({_INSERT}) SELECT count(*) FROM stored"
    ),
    (False, True): text(f"WITH written AS ({INSERT_EVENTS_SQL}) {_INSERT}"),
    (True, True): text(
        f"WITH stored AS ({inbox.STORE_SQL}), written AS ({INSERT_EVENTS_SQL}),"
        f" run AS ({_INSERT}) SELECT count(*) FROM stored"
    ),
}


@dataclass(frozen=True)
class Run:
    """Which run of which step: the Celery task id and when the run began."""

    task_id: str
    started_at: datetime


def record(
    session: Session,
    *,
    step: str,
    correlation_id: str,
    run: Run,
    finished_at: datetime,
    stored: tuple[inbox.Key, Any] | None = None,
) -> bool:
    """One INSERT, in the step's transaction: it exists once the step committed, with
    the active span's trace id when tracing is on. `stored`: the step's inbox key and
    result, stored by the same statement (inbox.store, one round trip less); the events
    the step recorded and that are not written yet go in it too. False: the inbox row
    was there (a duplicate committed first): the caller rolls back."""
    params: dict[str, Any] = {
        "correlation_id": correlation_id,
        "step": step,
        "task_id": run.task_id,
        "started_at": run.started_at,
        "finished_at": finished_at,
        "trace_id": current_trace_id(),
    }
    if stored is not None:
        params.update(inbox.store_params(*stored))
    # Taken before the statement: the session would otherwise insert them on its own first.
    events = take_pending_events(session)
    if events is not None:
        params["events"] = events
    written = session.execute(_RECORD[stored is not None, events is not None], params)
    return stored is None or bool(written.scalar_one())
