"""The base task of every pipeline step: one place for delivery semantics.

It owns, for each run: the log context (correlation id, task id), the transaction,
the inbox row that makes a redelivery return the stored result, the post-commit
side effects (the after-commit channel, models.effects) through the use cases
(actions.steps, which own the transaction and the inbox row), retries with exponential backoff
and jitter, and — once retries are spent or the error is permanent — the dead letter.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, ClassVar

import kombu.exceptions
import redis.exceptions
from celery import Task, shared_task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy.exc import IntegrityError, OperationalError

from actions.steps import Delivery
from core.logs import log_context
from domain.clock import utcnow
from domain.errors import StepCancelled, TransientStepError, safe_reason
from domain.events import record_step_retry
from domain.step_runs import Run
from models import database_unreachable, lock_not_available
from tasks.celery_app import TutorflowCelery
from tasks.dead_letters import FIRST_FAILED_AT, park
from tasks.failures import failure_kind
from tasks.poison import check_redelivery

log = logging.getLogger(__name__)

# Errors that a later attempt can get past: the database or broker was briefly away,
# a lock or race was lost (a retry re-reads the state), no trainer was free.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    IntegrityError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TransientStepError,
    SoftTimeLimitExceeded,  # slow, not wrong: a network or database that hung
)

# The ids of this process's attempts whose retry is in the broker but whose retry
# handling has not finished (on_retry). By id, not on the request: an error raised outside
# the task body reaches on_failure after Celery has popped the request.
_retry_published: set[str] = set()


# The task events an operator acts on. With CELERY_STEP_EVENTS=outcomes a step sends only
# these: Flower lists every step that failed or retries, not each success of each payment.
OUTCOME_EVENTS = frozenset({"task-failed", "task-retried", "task-rejected", "task-revoked"})


class StepRequest(Request):
    """A step's run as the worker's main process sees it; it decides which task events
    reach Flower (settings.step_events). The events cost the worker's main process:
    serialized and published to the broker, three per step when all are sent."""

    def send_event(self, type: str, **fields: Any) -> None:
        if self.task.send_events:  # settings.step_events == "all"
            super().send_event(type, **fields)
        elif self._eventer and self._eventer.enabled and self._an_outcome(type):
            # Flower never had this task's "task-received": name it here.
            fields.setdefault("name", self.name)
            fields.setdefault("args", self.argsrepr)
            fields.setdefault("kwargs", self.kwargsrepr)
            fields.setdefault("retries", self.request_dict.get("retries", 0))
            self._eventer.send(type, uuid=self.id, **fields)

    def _an_outcome(self, type: str) -> bool:
        # A retry's success too: Flower would show the step as retrying forever.
        return type in OUTCOME_EVENTS or (
            type == "task-succeeded" and bool(self.request_dict.get("retries"))
        )


class StepEvents(Task):
    """A task whose events follow settings.step_events (the pipeline's steps; the
    benches' bare chain, so that it pays what the steps pay)."""

    Request = StepRequest

    @property
    def send_events(self) -> bool:
        """Read by the worker for the "task-received" event (StepRequest: the others)."""
        return self.app.settings.step_events == "all"


class Housekeeping(StepEvents):
    """A beat job: Flower hears only of its failures and retries (and of a retried run's
    success), never of its routine runs: `relay_outbox` alone would add a row every few
    seconds to the Tasks page and bury the failures an operator looks for."""

    @property
    def send_events(self) -> bool:
        return False


def app_of(task: Task) -> TutorflowCelery:
    """The app a task runs in, with the parts the composition root attached."""
    app: TutorflowCelery = task.app
    return app


class PipelineTask(StepEvents):
    acks_late = True
    autoretry_for = TRANSIENT_ERRORS
    # retry_backoff, retry_backoff_max and retry_jitter come from the Celery app's
    # settings (tasks.pipeline.step). CELERY_RETRY_BACKOFF=0 turns the backoff off:
    # Celery then waits default_retry_delay (its own default, 180 s); off means at once.
    default_retry_delay = 0
    # The event this step consumes: names its inbox rows. None: no inbox (no DB effect).
    consumes: ClassVar[str | None] = None
    # False for steps whose failure harms nothing (the cache refresh): logged only.
    dead_letter_on_failure: ClassVar[bool] = True

    @property
    def tutorflow(self) -> TutorflowCelery:
        """This app's parts: database, cache, provider, mailer, outbox, settings."""
        return app_of(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with log_context(correlation_id=kwargs.get("correlation_id"), task_id=self.request.id):
            # A message that came back after its worker died too often is parked, not
            # run (tasks/poison.py): on_failure dead-letters WorkerLostRepeatedly.
            check_redelivery(self.tutorflow, self.request)
            try:
                return super().__call__(*args, **kwargs)
            except StepCancelled as cancelled:
                # Refunded: stop here, quietly. Rolled back; acked; the chain ends.
                log.info("step cancelled: %s", cancelled)
                raise Ignore() from cancelled

    def delivery(self, correlation_id: str) -> Delivery:
        """This run's message as its use case sees it (its inbox row's key), and the
        run itself (task id, start: asked first thing in the step's body)."""
        run = None if self.request.id is None else Run(self.request.id, utcnow())
        return Delivery(self.name, correlation_id, self.consumes, run)

    def retry(self, *args: Any, **options: Any) -> Any:
        # Carry the first failure's time across retries, for the dead letter.
        first = getattr(self.request, FIRST_FAILED_AT, None) or utcnow().isoformat()
        options["headers"] = {**(options.get("headers") or {}), FIRST_FAILED_AT: first}
        limit = options.get("max_retries", self.max_retries)
        if self.riding_out_an_outage(options.get("exc"), first, limit):
            # The database is away (a failover), or a row stays locked by a worker cut
            # off mid-transaction: this attempt does not spend the step's retries; the
            # backoff still grows, up to its cap.
            limit = options["max_retries"] = self.request.retries + 1
        if limit is None or self.request.retries < limit:  # else Celery raises exc: no retry
            # Before the retry is published: the next attempt's events come after this.
            self.note_retry(options.get("exc"), limit)
        try:
            return super().retry(*args, **options)
        except Retry:
            # Published: from here on the retry owns the message's future (on_failure).
            _retry_published.add(self.request.id)
            raise

    def riding_out_an_outage(
        self, exc: BaseException | None, first: str, limit: int | None
    ) -> bool:
        """Out of retries, but the database could not be reached, or a row lock was not
        granted in time, and the first failure is younger than
        settings.db_outage_retry_seconds. A lock held by a lost worker lasts until
        PostgreSQL ends its transaction (up to 30 s), which a step's attempts need not
        outlast (six of 4.5 s, retried at once as the multi-host tests retry, do not)."""
        if limit is None or self.request.retries < limit:
            return False
        if not (database_unreachable(exc) or lock_not_available(exc)):
            return False
        waited = utcnow() - datetime.fromisoformat(first)
        return waited < timedelta(seconds=self.tutorflow.settings.db_outage_retry_seconds)

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        _retry_published.discard(task_id)
        with log_context(correlation_id=kwargs.get("correlation_id"), task_id=task_id):
            log.warning(
                "step failed, will retry",
                extra={"retries": self.request.retries, "error": f"{type(exc).__name__}: {exc}"},
            )

    def note_retry(self, exc: BaseException | None, limit: int | None) -> None:
        """The payment's timeline says the step retries (attempt n of m, a safe reason).
        Its own short transaction: the step's own was rolled back. Best effort: a
        database that is away must not stop the retry."""
        correlation_id = (self.request.kwargs or {}).get("correlation_id")
        # The database is away: writing would wait for the connect timeout, in vain.
        if correlation_id is None or database_unreachable(exc):
            return
        try:
            with self.tutorflow.database.transaction() as session:
                record_step_retry(
                    session,
                    correlation_id=uuid.UUID(correlation_id),
                    step=self.name.rsplit(".", 1)[-1],
                    attempt=self.request.retries + 1,
                    attempts=None if limit is None else limit + 1,
                    reason=safe_reason(failure_kind(exc)),
                )
        except Exception:
            log.warning("the retry could not be written to the timeline", exc_info=True)

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, TimeLimitExceeded):
            # Killed at the hard limit: the worker requeues the message
            # (task_acks_on_timeout=False), so this is not the end of it.
            log.warning("hard time limit: the message is requeued", extra={"task_id": task_id})
            return
        if task_id in _retry_published:
            _retry_published.discard(task_id)
            # The retry was already in the broker when this attempt failed after all
            # (the soft time limit struck while Celery was still handling the retry, say,
            # after a step hung on a partitioned network): the retry goes on, and a dead
            # letter beside it would be a false alarm for a payment that completes.
            log.warning(
                "failed after its retry was published: no dead letter, the retry goes on",
                extra={"task_id": task_id, "error": f"{type(exc).__name__}: {exc}"},
            )
            return
        if not self.dead_letter_on_failure:
            log.error("step failed for good (no dead letter: non-critical)", exc_info=exc)
            return
        with log_context(correlation_id=kwargs.get("correlation_id"), task_id=task_id):
            park(
                task=self,
                task_id=task_id,
                exc=exc,
                traceback=str(einfo),
                args=list(args),
                kwargs=dict(kwargs),
                first_failed_at=getattr(self.request, FIRST_FAILED_AT, None),
            )


def step(
    name: str,
    *,
    max_retries: int,
    consumes: str | None = None,
    dead_letter_on_failure: bool = True,
    base: type[PipelineTask] = PipelineTask,
) -> Any:
    """A pipeline step, declared once for any app (shared_task): the base task (or a
    subclass); its backoff comes from the app's settings (celeryconfig.step_retries)."""
    return shared_task(
        base=base,
        bind=True,
        name=name,
        max_retries=max_retries,
        consumes=consumes,
        dead_letter_on_failure=dead_letter_on_failure,
    )
