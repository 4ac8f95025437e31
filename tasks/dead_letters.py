"""Dead letters: Celery on Redis has none, so the base task parks its final failure.

`park` runs in the failing task's `on_failure`, before its message is acked, and
publishes to the `dead_letter` queue; `record_dead_letter` (consumed by the
dead-letter worker, which also makes the queue visible in Flower) stores it. If the
broker is down, `park` writes the row itself. Replay and discard are application
actions (actions.dead_letters).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from actions import dead_letters
from domain.clock import utcnow
from domain.errors import qualified_name
from tasks.chains import RECORD_DEAD_LETTER

log = logging.getLogger(__name__)


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
    now = utcnow().isoformat()
    letter = {
        "task_name": task.name,
        "exception_type": qualified_name(exc),
        "exception_message": str(exc)[:4000],
        "correlation_id": kwargs.get("correlation_id"),
        "task_id": task_id,  # the failure's own (task.request is empty in some paths)
        "args": args,
        "kwargs": kwargs,
        "chain": list(task.request.chain or []),
        "traceback": traceback[-20000:],
        "retries": task.request.retries,
        "first_failed_at": first_failed_at or now,
        "last_failed_at": now,
    }
    log.error("dead-lettering %s: %s", task.name, letter["exception_message"])
    try:
        task.app.signature(RECORD_DEAD_LETTER, kwargs=letter).apply_async(
            argsrepr="()", kwargsrepr=_short(letter)
        )
        return
    except Exception:
        log.exception("dead-letter publish failed; recording it directly")
    try:
        dead_letters.record(task.app.database, letter)
    except Exception:
        # Last resort: the whole letter is in the log, to be re-entered by hand.
        log.critical("dead letter could not be recorded", extra={"dead_letter": letter})
        raise


@shared_task(
    bind=True,
    name=RECORD_DEAD_LETTER,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,  # the database coming back is all it waits for
)
def record_dead_letter(self: Task, **letter: Any) -> str:
    """Its result is what Flower's task page shows: the letter id replay needs, the
    failed task, the reason, and how many letters are open."""
    recorded = dead_letters.record(self.app.database, letter)
    again = f" (its replay of dead letter {recorded.replay_of} failed again)"
    return (
        f"dead letter {recorded.letter_id}: {recorded.task_name}"
        f"{again if recorded.replay_of else ''} failed for payment {recorded.correlation_id}"
        f" — {recorded.exception[:REASON_SHOWN]}. {recorded.open.describe(utcnow())}"
    )


# Celery cuts a message's argument repr at 1024 characters (and the letter's traceback
# alone is longer): Flower would show a cut-off dict. It shows this instead.
REASON_SHOWN = 300


def _short(letter: dict[str, Any]) -> str:
    return repr(
        {
            "task_name": letter["task_name"],
            "task_id": letter["task_id"],
            "correlation_id": letter["correlation_id"],
            "retries": letter["retries"],
            "exception": f"{letter['exception_type']}: {letter['exception_message']}"[
                :REASON_SHOWN
            ],
        }
    )


@shared_task(bind=True, name="tutorflow.dead_letters.report_open", acks_late=True)
def report_open_dead_letters(self: Task) -> str:
    """Beat, every minute: Flower's tasks page always has a current line "N dead
    letters open, oldest X min: ids …" (filter by `dead_letters`). The dead_letter
    queue's length says nothing about this: its consumer stores each letter at once."""
    return dead_letters.open_letters(self.app.database).describe(utcnow())
