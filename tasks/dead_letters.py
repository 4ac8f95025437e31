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

from celery import Task
from sqlalchemy.exc import OperationalError

from actions import dead_letters
from domain.clock import utcnow
from tasks.celery_app import celery_app

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
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
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
        record_dead_letter.apply_async(kwargs=letter)
        return
    except Exception:
        log.exception("dead-letter publish failed; recording it directly")
    try:
        dead_letters.record(celery_app.database, letter)
    except Exception:
        # Last resort: the whole letter is in the log, to be re-entered by hand.
        log.critical("dead letter could not be recorded", extra={"dead_letter": letter})
        raise


@celery_app.task(
    bind=True,
    name="tutorflow.dead_letters.record",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,  # the database coming back is all it waits for
)
def record_dead_letter(self: Task, **letter: Any) -> None:
    dead_letters.record(celery_app.database, letter)
