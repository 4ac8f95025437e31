"""What an operator sees of one payment: the chain as one thing — each step in order
with its runs (task id, start, commit, duration, trace), its retries and its dead
letters — beside the payment's state and timeline (domain.read_models.payment_detail).

Flower shows tasks one by one (and, with CELERY_STEP_EVENTS=outcomes, only those that
retried or failed); this joins them by the payment: step runs (models.StepRun, written
in each step's transaction), the timeline's retries and the payment's dead letters.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.events import EventType
from domain.read_models import payment_detail
from models import DeadLetter, DeadLetterStatus, DomainEvent, StepRun
from models.events import TRACE_ID


def short_name(task_name: str) -> str:
    return task_name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class RunView:
    task_id: str
    started_at: datetime
    finished_at: datetime
    trace_id: str | None

    @property
    def duration_ms(self) -> int:
        return max(0, round((self.finished_at - self.started_at).total_seconds() * 1000))


@dataclass
class StepView:
    step: str
    task_name: str
    runs: list[RunView] = field(default_factory=list)
    retries: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def status(self) -> str:
        """done (it committed); else as its newest dead letter says: dead_lettered
        (open), replayed (running again), discarded; else retrying, or not_run (yet,
        or ever: the chain stopped before it)."""
        if self.runs:
            return "done"
        if self.dead_letters:
            newest = self.dead_letters[-1].status
            return "dead_lettered" if newest == DeadLetterStatus.OPEN else str(newest)
        if self.retries:
            return "retrying"
        return "not_run"


def payment_chain(session: Session, payment_id: uuid.UUID, chain: Sequence[str]) -> dict[str, Any]:
    """The payment (NotFound when there is none), its fulfilment and timeline, its
    steps and the trace ids they ran in. `chain`: the task names of the steps that
    keep a run, in the chain's order (the workers' names; a step not run yet is shown
    too); any other step of the payment (a refund's compensation, a reallocation)
    follows in the order it ran."""
    detail = payment_detail(session, payment_id)
    correlation_id = str(payment_id)
    runs = session.scalars(
        select(StepRun).where(StepRun.correlation_id == correlation_id).order_by(StepRun.id)
    ).all()
    steps = {short_name(task): StepView(short_name(task), task) for task in chain}
    for run in runs:
        name = short_name(run.step)
        view = steps.setdefault(name, StepView(name, run.step))
        view.runs.append(RunView(run.task_id, run.started_at, run.finished_at, run.trace_id))
    events: list[DomainEvent] = detail["timeline"]
    for event in events:
        if event.event_type == EventType.STEP_RETRYING:
            name = event.payload.get("step", "")
            steps.setdefault(name, StepView(name, name)).retries += 1
    letters: list[DeadLetter] = detail["fulfilment"]["dead_letters"]
    for letter in letters:
        name = short_name(letter.task_name)
        steps.setdefault(name, StepView(name, letter.task_name)).dead_letters.append(letter)
    trace_ids = [run.trace_id for run in runs] + [e.payload.get(TRACE_ID) for e in events]
    return {
        **detail,
        "steps": list(steps.values()),
        "trace_ids": list(dict.fromkeys(t for t in trace_ids if t)),
        "dead_letters": letters,
    }
