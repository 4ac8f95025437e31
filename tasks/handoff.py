"""What each kind of outbox message publishes to the broker: the dispatch table the
composition root gives the outbox's one publisher (models.outbox). By task name, through
the app it is given: this module imports no task.

Publishing twice is harmless: every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery

from models import OutboxKind
from tasks import chains
from tasks.redelivery import Redelivery

# A request must not hang on a dead broker: give up after ~0.5 s and leave the outbox
# row to the relay (the API has already committed and answers 202).
API_PUBLISH_RETRY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

Publish = Callable[[Mapping[str, Any]], None]

# A settle asked for and not started within this (a lost message, workers down) is asked
# for again by the next replay or discard; beat settles every minute regardless.
SETTLE_PENDING_SECONDS = 60


def dispatch(app: Celery) -> dict[str, Publish]:
    """kind → how `app` publishes it."""

    def start_pipeline(payload: Mapping[str, Any]) -> None:
        chains.fulfilment_chain(app, payload["payment_id"]).apply_async(
            retry_policy=API_PUBLISH_RETRY
        )

    def start_compensation(payload: Mapping[str, Any]) -> None:
        chains.compensation_chain(app, payload["payment_id"]).apply_async(
            retry_policy=API_PUBLISH_RETRY
        )

    def start_reallocation(payload: Mapping[str, Any]) -> None:
        chains.reallocation_chain(app, payload["allocation_id"], payload["payment_id"]).apply_async(
            retry_policy=API_PUBLISH_RETRY
        )

    def refund_unservable(payload: Mapping[str, Any]) -> None:
        app.signature(
            chains.REFUND_UNSERVABLE,
            (payload["payment_id"],),
            {"correlation_id": payload["payment_id"]},
        ).apply_async(retry_policy=API_PUBLISH_RETRY)

    def replay_dead_letter(payload: Mapping[str, Any]) -> None:
        # The letter's redelivery, as tasks.dead_letters.park wrote it (rows of an older
        # release: its fields beside the run id, under "task_id"). The chain option
        # carries the links that had not run: the pipeline runs to its end. The run id
        # the letter noted (older rows: none): a letter this run parks links back.
        again = Redelivery.from_json(payload.get("redelivery", payload))
        app.signature(again.task_name, args=again.args, kwargs=again.kwargs).apply_async(
            task_id=payload.get("run_id", payload.get("task_id")),
            chain=again.chain,
            retry_policy=API_PUBLISH_RETRY,
        )

    def settle_dead_letters(payload: Mapping[str, Any]) -> None:
        # Once for a burst: a bulk replay or discard resolves letters one transaction
        # each, and one settle (which reads them all) serves those before it starts.
        if not app.cache.claim(chains.SETTLE_PENDING_KEY, SETTLE_PENDING_SECONDS):
            return
        try:
            app.signature(chains.SETTLE_DEAD_LETTERS).apply_async(retry_policy=API_PUBLISH_RETRY)
        except Exception:
            app.cache.release(chains.SETTLE_PENDING_KEY)  # the outbox's next attempt asks again
            raise

    def send_notification(payload: Mapping[str, Any]) -> None:
        # A change's e-mails in one task; `notification_id`: a row of the release before.
        ids = (
            payload["notification_ids"]
            if "notification_ids" in payload
            else payload["notification_id"]
        )
        app.signature(
            chains.SEND_NOTIFICATION,
            (ids,),
            {"correlation_id": payload["payment_id"]},
        ).apply_async(retry_policy=API_PUBLISH_RETRY)

    # By signature, not send_task: a process that registered the task (a worker, the
    # tests' eager mode) runs it through Task.apply_async, which honours eager mode.
    return {
        OutboxKind.START_PIPELINE: start_pipeline,
        OutboxKind.START_COMPENSATION: start_compensation,
        OutboxKind.REPLAY_DEAD_LETTER: replay_dead_letter,
        OutboxKind.REALLOCATE: start_reallocation,
        OutboxKind.SEND_NOTIFICATION: send_notification,
        OutboxKind.REFUND_UNSERVABLE: refund_unservable,
        OutboxKind.SETTLE_DEAD_LETTERS: settle_dead_letters,
    }
