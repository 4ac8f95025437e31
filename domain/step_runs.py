"""A step's run, recorded in the step's own transaction: the operator's payment page
shows each step of the chain with its task id (Flower's link), its duration and its
trace (domain.operator_view)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.tracing import current_trace_id

# Plain SQL, as the inbox's statements (domain.inbox): it runs on every step of every
# payment. The table is models.StepRun's.
_RECORD = text(
    "INSERT INTO step_runs (correlation_id, step, task_id, started_at, finished_at, trace_id)"
    " VALUES (:correlation_id, :step, :task_id, :started_at, :finished_at, :trace_id)"
)


@dataclass(frozen=True)
class Run:
    """Which run of which step: the Celery task id and when the run began."""

    task_id: str
    started_at: datetime


def record(
    session: Session, *, step: str, correlation_id: str, run: Run, finished_at: datetime
) -> None:
    """One INSERT, in the step's transaction: it exists once the step committed, with
    the active span's trace id when tracing is on."""
    session.execute(
        _RECORD,
        {
            "correlation_id": correlation_id,
            "step": step,
            "task_id": run.task_id,
            "started_at": run.started_at,
            "finished_at": finished_at,
            "trace_id": current_trace_id(),
        },
    )
