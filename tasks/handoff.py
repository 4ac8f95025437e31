"""What each kind of outbox message publishes to the broker.

The after-commit channel (tasks.effects) and the beat relay both publish through
`PUBLISHERS`. Publishing twice is harmless: every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models import OutboxKind
from tasks.celery_app import celery_app
from tasks.notifications import send_notification
from tasks.pipeline import compensation_chain, fulfilment_chain, reallocation_chain
from tasks.pipeline import refund_unservable as refund_task
from tasks.redelivery import Redelivery

# A request must not hang on a dead broker: give up after ~0.5 s and leave the outbox
# row to the relay (the API has already committed and answers 202).
API_PUBLISH_RETRY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


def start_pipeline(payload: dict[str, Any]) -> None:
    fulfilment_chain(payload["payment_id"]).apply_async(retry_policy=API_PUBLISH_RETRY)


def start_compensation(payload: dict[str, Any]) -> None:
    compensation_chain(payload["payment_id"]).apply_async(retry_policy=API_PUBLISH_RETRY)


def start_reallocation(payload: dict[str, Any]) -> None:
    reallocation_chain(payload["allocation_id"], payload["payment_id"]).apply_async(
        retry_policy=API_PUBLISH_RETRY
    )


def refund_unservable(payload: dict[str, Any]) -> None:
    refund_task.apply_async(
        args=[payload["payment_id"]],
        kwargs={"correlation_id": payload["payment_id"]},
        retry_policy=API_PUBLISH_RETRY,
    )


def replay_dead_letter(payload: dict[str, Any]) -> None:
    # The letter's redelivery, as tasks.dead_letters.park wrote it (rows of an older
    # release: its fields beside the run id, under "task_id").
    again = Redelivery.from_json(payload.get("redelivery", payload))
    # The chain option carries the links that had not run: the pipeline runs to its end.
    task = celery_app.tasks[again.task_name]
    # The run id the letter noted (older rows: none): a letter this run parks links back.
    task.apply_async(
        task_id=payload.get("run_id", payload.get("task_id")),
        args=again.args,
        kwargs=again.kwargs,
        chain=again.chain,
        retry_policy=API_PUBLISH_RETRY,
    )


def send_notification_mail(payload: dict[str, Any]) -> None:
    send_notification.apply_async(
        args=[payload["notification_id"]],
        kwargs={"correlation_id": payload["payment_id"]},
        retry_policy=API_PUBLISH_RETRY,
    )


PUBLISHERS: dict[str, Callable[[dict[str, Any]], None]] = {
    OutboxKind.START_PIPELINE: start_pipeline,
    OutboxKind.START_COMPENSATION: start_compensation,
    OutboxKind.REPLAY_DEAD_LETTER: replay_dead_letter,
    OutboxKind.REALLOCATE: start_reallocation,
    OutboxKind.SEND_NOTIFICATION: send_notification_mail,
    OutboxKind.REFUND_UNSERVABLE: refund_unservable,
}
