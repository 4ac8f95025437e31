"""Dead letters: Celery on Redis has none, so the base task parks its final failure.

`park` runs in the failing task's `on_failure`, before its message is acked, and
publishes to the `dead_letter` queue; `record_dead_letter` (consumed by the
dead-letter worker, which also makes the queue visible in Flower) stores it. If the
broker is down, `park` writes the row itself. Replay and discard are application
actions (actions.dead_letters).

The letter is a `domain.dead_letters.DeadLetterRecord`; what it takes to run the step
again (the task, its arguments, the rest of its chain) is built here as a
`tasks.redelivery.Redelivery`, which the domain stores without reading, and the kind of
failure is decided here (tasks.failures).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import Celery, Task, shared_task
from sqlalchemy.exc import OperationalError

from actions import dead_letters
from domain.clock import utcnow
from domain.dead_letters import DeadLetterRecord
from models import FailureKind
from tasks.chains import RECORD_DEAD_LETTER
from tasks.failures import failure_kind, failure_kind_named, qualified_name
from tasks.redelivery import Redelivery

log = logging.getLogger(__name__)

# The message header that carries a step's first failure across its retries (tasks.base).
FIRST_FAILED_AT = "x_first_failed_at"


def park(
    *,
    task: Task,
    task_id: str,
    exc: BaseException,
    traceback: str,
    args: list[Any],
    kwargs: dict[str, Any],
    first_failed_at: str | None,
) -> None:
    now = utcnow()
    record = DeadLetterRecord(
        run_id=task_id,  # the failure's own (task.request is empty in some paths)
        step=task.name,
        correlation_id=kwargs.get("correlation_id"),
        kind=failure_kind(exc),
        exception_type=qualified_name(exc),
        exception_message=str(exc)[:4000],
        traceback=traceback[-20000:],
        retries=task.request.retries,
        first_failed_at=datetime.fromisoformat(first_failed_at) if first_failed_at else now,
        last_failed_at=now,
        redelivery=Redelivery(
            task_name=task.name, args=args, kwargs=kwargs, chain=list(task.request.chain or [])
        ).to_json(),
    )
    log.error("dead-lettering %s: %s", task.name, record.exception_message)
    try:
        publish(task.app, record)
        return
    except Exception:
        log.exception("dead-letter publish failed; recording it directly")
    try:
        dead_letters.record(task.app.database, record)
    except Exception:
        # Last resort: the whole letter is in the log, to be re-entered by hand.
        log.critical("dead letter could not be recorded", extra={"dead_letter": to_message(record)})
        raise


def publish(app: Celery, record: DeadLetterRecord) -> None:
    """Hand the letter to the dead_letter queue, whose worker stores it."""
    app.signature(RECORD_DEAD_LETTER, kwargs=to_message(record)).apply_async(
        argsrepr="()", kwargsrepr=_short(record)
    )


@shared_task(
    bind=True,
    name=RECORD_DEAD_LETTER,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,  # the database coming back is all it waits for
)
def record_dead_letter(self: Task, **message: Any) -> str:
    """Its result is what Flower's task page shows: the letter id replay needs, the
    failed task, the reason, and how many letters are open."""
    recorded = dead_letters.record(self.app.database, from_message(message))
    again = f" (its replay of dead letter {recorded.replay_of} failed again)"
    return (
        f"dead letter {recorded.letter_id}: {recorded.step}"
        f"{again if recorded.replay_of else ''} failed for payment {recorded.correlation_id}"
        f" — {recorded.exception[:REASON_SHOWN]}. {recorded.open.describe(utcnow())}"
    )


def to_message(record: DeadLetterRecord) -> dict[str, Any]:
    """The record as the dead_letter queue carries it (JSON)."""
    return {
        "run_id": record.run_id,
        "step": record.step,
        "correlation_id": record.correlation_id,
        "kind": record.kind.value,
        "exception_type": record.exception_type,
        "exception_message": record.exception_message,
        "traceback": record.traceback,
        "retries": record.retries,
        "first_failed_at": record.first_failed_at.isoformat(),
        "last_failed_at": record.last_failed_at.isoformat(),
        "redelivery": record.redelivery,
    }


def from_message(message: dict[str, Any]) -> DeadLetterRecord:
    if "run_id" not in message:
        return _parked_by_an_older_release(message)
    return DeadLetterRecord(
        run_id=message["run_id"],
        step=message["step"],
        correlation_id=message["correlation_id"],
        kind=FailureKind(message["kind"]),
        exception_type=message["exception_type"],
        exception_message=message["exception_message"],
        traceback=message["traceback"],
        retries=message["retries"],
        first_failed_at=datetime.fromisoformat(message["first_failed_at"]),
        last_failed_at=datetime.fromisoformat(message["last_failed_at"]),
        redelivery=message["redelivery"],
    )


def _parked_by_an_older_release(letter: dict[str, Any]) -> DeadLetterRecord:
    """A message of the release before `DeadLetterRecord` (the row's columns, with the
    call's arguments and chain beside them), which may wait in the queue across a
    deploy. To be removed once no such release runs."""
    return DeadLetterRecord(
        run_id=letter["task_id"],
        step=letter["task_name"],
        correlation_id=letter["correlation_id"],
        kind=failure_kind_named(letter["exception_type"]),
        exception_type=letter["exception_type"],
        exception_message=letter["exception_message"],
        traceback=letter["traceback"],
        retries=letter["retries"],
        first_failed_at=datetime.fromisoformat(letter["first_failed_at"]),
        last_failed_at=datetime.fromisoformat(letter["last_failed_at"]),
        redelivery=Redelivery.from_json(letter).to_json(),
    )


# Celery cuts a message's argument repr at 1024 characters (and the letter's traceback
# alone is longer): Flower would show a cut-off dict. It shows this instead.
REASON_SHOWN = 300


def _short(record: DeadLetterRecord) -> str:
    return repr(
        {
            "task_name": record.step,
            "task_id": record.run_id,
            "correlation_id": record.correlation_id,
            "retries": record.retries,
            "exception": f"{record.exception_type}: {record.exception_message}"[:REASON_SHOWN],
        }
    )


@shared_task(bind=True, name="tutorflow.dead_letters.report_open", acks_late=True)
def report_open_dead_letters(self: Task) -> str:
    """Beat, every minute: Flower's tasks page always has a current line "N dead
    letters open, oldest X min: ids …" (filter by `dead_letters`). The dead_letter
    queue's length says nothing about this: its consumer stores each letter at once."""
    return dead_letters.open_letters(self.app.database).describe(utcnow())
