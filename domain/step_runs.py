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

# Plain SQL, as the inbox's statements (domain.inbox): it runs on every step of every
# payment. The table is models.StepRun's.
_INSERT = (
    "INSERT INTO step_runs (correlation_id, step, task_id, started_at, finished_at, trace_id)"
    " VALUES (:correlation_id, :step, :task_id, :started_at, :finished_at, :trace_id)"
)
_RECORD = text(_INSERT)
# With the step's inbox result (domain.inbox.store_result's UPDATE) in the same round trip.
_RECORD_WITH_RESULT = text(f"WITH stored AS ({inbox.STORE_SQL}) {_INSERT}")


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
    stored: tuple[inbox.Claim, Any] | None = None,
) -> None:
    """One INSERT, in the step's transaction: it exists once the step committed, with
    the active span's trace id when tracing is on. `stored`: the step's inbox claim and
    result, stored by the same statement (inbox.store_result, one round trip less)."""
    params = {
        "correlation_id": correlation_id,
        "step": step,
        "task_id": run.task_id,
        "started_at": run.started_at,
        "finished_at": finished_at,
        "trace_id": current_trace_id(),
    }
    if stored is None:
        session.execute(_RECORD, params)
    else:
        session.execute(_RECORD_WITH_RESULT, {**params, **inbox.store_params(*stored)})
