"""A step's run, recorded in the step's own transaction: the operator's payment page
shows each step of the chain with its task id (Flower's link), its duration and its
trace (domain.operator_view)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from models import StepRun


@dataclass(frozen=True)
class Run:
    """Which run of which step: the Celery task id and when the run began."""

    task_id: str
    started_at: datetime


def record(
    session: Session, *, step: str, correlation_id: str, run: Run, finished_at: datetime
) -> None:
    """One INSERT, in the step's transaction: it exists once the step committed. The
    trace id is the column's default (the active span's, when tracing is on)."""
    session.execute(
        insert(StepRun).values(
            correlation_id=correlation_id,
            step=step,
            task_id=run.task_id,
            started_at=run.started_at,
            finished_at=finished_at,
        )
    )
