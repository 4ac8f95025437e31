"""Publishing outbox messages to the broker, after the commit that wrote them.

The API (and the dead-letter replay) commit an outbox row with their change and call
`publish_after_commit`; a message the broker did not take stays unpublished for the
beat relay. Publishing twice is harmless: every step is idempotent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from domain.payments import START_PIPELINE, Confirmation, Handoff, confirm_payment
from domain.refunds import START_COMPENSATION, Refund, refund_payment
from models import OutboxMessage, after_commit
from models.session import execute_autocommit
from tasks.celery_app import celery_app
from tasks.dead_letters import REPLAY_DEAD_LETTER
from tasks.pipeline import compensation_chain, fulfilment_chain

log = logging.getLogger(__name__)


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


def _replay_dead_letter(payload: dict[str, Any]) -> None:
    # The chain option carries the links that had not run: the pipeline runs to its end.
    task = celery_app.tasks[payload["task_name"]]
    task.apply_async(
        args=payload["args"],
        kwargs=payload["kwargs"],
        chain=payload["chain"],
        retry_policy=API_PUBLISH_RETRY,
    )


_STAMP = text(
    "UPDATE outbox SET published_at = now(), attempts = attempts + 1 "
    "WHERE id = :id AND published_at IS NULL"
)

PUBLISHERS: dict[str, Callable[[dict[str, Any]], None]] = {
    START_PIPELINE: start_pipeline,
    REPLAY_DEAD_LETTER: _replay_dead_letter,
    START_COMPENSATION: start_compensation,
}


def confirm_and_hand_off(
    session: Session, payment_id: uuid.UUID, provider_payment_id: str, *, source: str
) -> Confirmation:
    """Confirm the payment in the caller's transaction; start the chain after its commit."""
    confirmation = confirm_payment(session, payment_id, provider_payment_id, source=source)
    if confirmation.outbox is not None:
        publish_after_commit(session, confirmation.outbox)
    return confirmation


def refund_and_compensate(
    session: Session,
    payment_id: uuid.UUID,
    *,
    source: str,
    provider_payment_id: str | None = None,
) -> Refund:
    """Refund in the caller's transaction; start the compensation after its commit."""
    refund = refund_payment(
        session, payment_id, source=source, provider_payment_id=provider_payment_id
    )
    if refund.outbox is not None:
        publish_after_commit(session, refund.outbox)
    return refund


def publish_after_commit(session: Session, message: Handoff | OutboxMessage) -> None:
    after_commit(session, partial(publish, message.id, message.kind, message.payload))


def publish(outbox_id: int, kind: str, payload: dict[str, Any]) -> bool:
    """Publish one outbox message and stamp it; False (and logged) if the broker failed."""
    try:
        PUBLISHERS[kind](payload)
    except Exception:
        log.warning(
            "outbox publish failed; the relay will retry",
            exc_info=True,
            extra={"outbox_id": outbox_id},
        )
        return False
    try:
        execute_autocommit(_STAMP, {"id": outbox_id})  # one round trip, no session
    except Exception:
        # Published but not stamped: the relay publishes it again, which is harmless.
        log.warning("outbox stamp failed", exc_info=True, extra={"outbox_id": outbox_id})
    return True
