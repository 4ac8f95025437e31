"""Poison messages: a message whose run kills the process running it every time (out of
memory, a segfault in a C library: SIGKILL, where no exception and no `on_failure` runs).
With `acks_late` and `task_reject_on_worker_lost` the worker hands it back to the broker
after each loss, and nothing else would bound that. Here it is parked as a dead letter
(kind `worker_lost`, "the worker running this step was lost N times") once it has cost
POISON_WORKER_LOSSES processes, and the rest of the queue flows. Sidekiq Pro's
super_fetch "poison pill" detection is the model: count, durably, how often a message
came back after its worker died; past the bound, park it where an operator sees it.

- Redis (kombu's transport marks a message it puts back `redelivered`): the base task
  counts each start of a redelivered message in Redis (INCR, keyed by the task id and
  its retry number, kept a day) before the step's body, and parks the message instead
  of running it once the count reaches the bound. A first delivery costs nothing.
- RabbitMQ: the broker counts. A policy (celeryconfig.poison_policy) gives the queues a
  delivery limit and the `poisoned` dead-letter exchange; the dead-letter worker sets it
  at start and consumes the `poisoned` queue, turning each message into a dead letter.

Either way the letter replays like any other: a replay is a new message under a new
task id, whose count starts at nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
from celery import bootsteps
from kombu import Consumer, Exchange, Message, Queue

from celeryconfig import AMQP_TRANSPORTS, POISON_POLICY, POISONED, broker_transport, poison_policy
from core.rabbitmq import put_policy
from domain.clock import utcnow
from domain.dead_letters import DeadLetterRecord
from models import FailureKind
from tasks import dead_letters
from tasks.failures import WorkerLostRepeatedly, qualified_name
from tasks.redelivery import Redelivery

if TYPE_CHECKING:
    from celery.app.task import Context

    from tasks.celery_app import TutorflowCelery

log = logging.getLogger(__name__)

# Redis: how often a message was started again after it came back; long enough to see a
# message return after a whole worker's loss (CELERY_VISIBILITY_TIMEOUT) several times.
REDELIVERIES_KEY = "tutorflow:redeliveries:{task_id}:{retries}"
REDELIVERIES_KEPT_SECONDS = 24 * 3600


def check_redelivery(app: TutorflowCelery, request: Context) -> None:
    """Before a step's body (tasks.base): raise WorkerLostRepeatedly for a message that
    came back after its worker was lost as many times as the setting allows. On RabbitMQ
    the broker's delivery limit does this; in eager runs nothing is delivered."""
    if not (request.delivery_info or {}).get("redelivered"):
        return
    if broker_transport(app.settings.broker_url) in AMQP_TRANSPORTS:
        return
    # A retry is a new message under the same task id: its own count.
    key = REDELIVERIES_KEY.format(task_id=request.id, retries=request.retries or 0)
    try:
        with app.cache.client.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, REDELIVERIES_KEPT_SECONDS)
            losses, _ = pipe.execute()
    except redis.RedisError:
        # Not counted: the step runs, as it did before this check existed.
        log.warning("the redelivery could not be counted; the step runs", exc_info=True)
        return
    # Each start of a redelivered message follows one loss (the first delivery started
    # too): the 4th start follows the 3rd loss.
    if losses >= app.settings.poison_worker_losses:
        raise WorkerLostRepeatedly(losses)


def poisoned_queue() -> Queue:
    return Queue(
        POISONED,
        Exchange(POISONED, type="fanout"),
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def poisoned_record(
    headers: dict[str, Any], body: Any, *, losses: int, now: datetime
) -> DeadLetterRecord:
    """The dead letter of a Celery task message (protocol 2) that RabbitMQ dead-lettered
    at its delivery limit."""
    args, kwargs, embed = body
    deaths = headers.get("x-death") or [{}]
    error = WorkerLostRepeatedly(losses)
    first = headers.get(dead_letters.FIRST_FAILED_AT)
    return DeadLetterRecord(
        run_id=headers["id"],
        step=headers["task"],
        correlation_id=kwargs.get("correlation_id"),
        kind=FailureKind.WORKER_LOST,
        exception_type=qualified_name(error),
        exception_message=str(error),
        traceback=(
            f"RabbitMQ dead-lettered the message from queue {deaths[0].get('queue')!r}: "
            f"{deaths[0].get('reason')} (its delivery limit, policy {POISON_POLICY!r})"
        ),
        retries=headers.get("retries") or 0,
        first_failed_at=datetime.fromisoformat(first) if first else now,
        last_failed_at=now,
        redelivery=Redelivery(
            task_name=headers["task"],
            args=list(args),
            kwargs=dict(kwargs),
            chain=list((embed or {}).get("chain") or []),
        ).to_json(),
    )


class PoisonedMessages(bootsteps.ConsumerStep):
    """RabbitMQ, in the worker that consumes `dead_letter_intake`: sets the delivery-limit
    policy on its vhost at start, and turns each message of the `poisoned` queue into a
    dead letter (published to `dead_letter_intake`, where the record task stores it)."""

    app: TutorflowCelery

    def start(self, c: Any) -> None:
        if "dead_letter_intake" not in c.app.amqp.queues.consume_from:
            return
        self.app = c.app
        settings = self.app.settings
        try:
            put_policy(
                settings.rabbitmq_management_url,
                settings.broker_url,
                POISON_POLICY,
                poison_policy(settings),
            )
        except OSError:
            log.error(
                "could not set the RabbitMQ policy %r through %s: poison messages are not "
                "bounded until it is set (docs/operations.md, Poison messages)",
                POISON_POLICY,
                settings.rabbitmq_management_url,
                exc_info=True,
            )
        super().start(c)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        return [
            Consumer(
                channel,
                queues=[poisoned_queue()],
                callbacks=[self.on_message],
                accept=["json"],
                prefetch_count=1,
            )
        ]

    def on_message(self, body: Any, message: Message) -> None:
        try:
            record = poisoned_record(
                message.headers,
                body,
                losses=self.app.settings.poison_worker_losses,
                now=utcnow(),
            )
        except (KeyError, TypeError, ValueError):
            # Not a task message of ours: the log keeps it whole.
            log.critical(
                "an unreadable message was dead-lettered",
                extra={"headers": message.headers, "body": body},
            )
            message.ack()
            return
        log.error("dead-lettering poison message %s: %s", record.step, record.exception_message)
        try:
            dead_letters.publish(self.app, record)
        except Exception:
            log.exception("the poison message's letter could not be published; it waits")
            message.requeue()
            return
        message.ack()
