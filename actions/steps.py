"""The pipeline's steps as use cases: each owns its transaction, with the inbox row that
makes a redelivery return the stored result, and asks the payment provider outside it.
The tasks (tasks/pipeline.py) do Celery's part only: routing, retries, acks, dead
letters; they pass in who is consuming what (`Delivery`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session

from core.provider import PaymentProvider, ProviderRejected, ProviderUnavailable
from domain import fulfilment, inbox, payments, reallocation, refunds, step_runs
from domain.clock import utcnow
from domain.errors import PermanentStepError, TransientStepError
from models import Database

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Delivery:
    """One message as its consumer sees it: the inbox row's key. `event_type` None:
    the step keeps no inbox row (its own states make it idempotent)."""

    consumer: str
    correlation_id: str
    event_type: str | None = None
    # This run (its task id, its start): recorded with the effect for the operator's
    # payment page. None: not recorded.
    run: step_runs.Run | None = None


class _AlreadyProcessed(Exception):
    """The inbox row was there when the step wrote its own: a duplicate committed first."""


def once(database: Database, delivery: Delivery, effect: Callable[[Session], T]) -> T:
    """Run `effect` in one transaction with its inbox row; return its result.

    The inbox row goes in last, with the result (domain.inbox). A step that already
    committed (redelivery after a crash, a duplicate publish, a replay, a duplicate
    running at the same time) finds it there: its own effect is rolled back and the
    stored result returned, so the chain continues unchanged; an error its effect
    raised on the state the first run left gives way to the stored result too. A
    StepCancelled from the effect of a message not yet processed rolls back and
    propagates."""
    key = (
        None
        if delivery.event_type is None
        else inbox.Key(delivery.consumer, delivery.correlation_id, delivery.event_type)
    )
    try:
        with database.transaction() as session:
            result = effect(session)
            if not _record(session, delivery, key, result):
                raise _AlreadyProcessed(f"{delivery.consumer} {delivery.correlation_id}")
    except Exception as exc:
        if key is None:
            raise
        stored = _stored(database, key, exc)
        log.info(
            "already processed, returning stored result",
            extra={"rolled_back": type(exc).__name__},
        )
        stored_result: T = stored.result
        return stored_result
    # Committed: the after-commit channel (cache, live events, outbox) has run.
    log.info("step done", extra={"step": delivery.consumer, "result": result})
    return result


def _record(session: Session, delivery: Delivery, key: inbox.Key | None, result: object) -> bool:
    """The step's inbox row and run, last, in one statement; False: a duplicate's row."""
    if delivery.run is not None:  # with the inbox's row, in one statement
        return step_runs.record(
            session,
            step=delivery.consumer,
            correlation_id=delivery.correlation_id,
            run=delivery.run,
            finished_at=utcnow(),
            stored=None if key is None else (key, result),
        )
    return key is None or inbox.store(session, key, result)


def _stored(database: Database, key: inbox.Key, failure: Exception) -> inbox.Stored:
    """The stored result that `failure` gives way to; else `failure` is raised again
    (so too when the inbox cannot be read: the database is away, say)."""
    stored = None
    try:
        with database.transaction() as session:  # a new snapshot
            stored = inbox.stored(session, key)
    except Exception:
        log.warning("the inbox could not be read after the step failed", exc_info=True)
    if stored is None:
        if isinstance(failure, _AlreadyProcessed):  # pruned meanwhile: ask again later
            raise TransientStepError(f"the inbox row of {failure} vanished") from failure
        raise failure
    return stored


def ask_provider(
    database: Database, provider: PaymentProvider, payment_id: uuid.UUID
) -> payments.ProviderReport | None:
    """The provider's word on the payment's intent, asked outside any transaction;
    None when the payment no longer waits for it (verified already, or settled)."""
    with database.reading() as session:
        intent_id = payments.intent_to_verify(session, payment_id)
    if intent_id is None:
        return None
    try:
        intent = provider.retrieve_intent(intent_id)
    except ProviderUnavailable as exc:
        raise TransientStepError(str(exc)) from exc
    except ProviderRejected as exc:
        raise PermanentStepError(f"the provider refused to show {intent_id}: {exc}") from exc
    return payments.ProviderReport(
        status=intent.status,
        amount_cents=intent.amount,
        currency=intent.currency,
        metadata_payment_id=intent.metadata.get("payment_id"),
        decline_message=intent.failure_message,
    )


def verify_payment(
    database: Database, provider: PaymentProvider, delivery: Delivery, payment_id: uuid.UUID
) -> payments.Verdict:
    """The provider's word, then the payment's verdict in one transaction."""
    report = ask_provider(database, provider, payment_id)

    def effect(session: Session) -> str:
        if report is None:
            return str(payments.verify_again(session, payment_id))
        return str(payments.verify(session, payment_id, report))

    return payments.Verdict(once(database, delivery, effect))


def create_purchase(database: Database, delivery: Delivery, payment_id: uuid.UUID) -> int:
    return once(
        database, delivery, lambda session: fulfilment.create_purchase(session, payment_id).id
    )


def allocate_trainer(database: Database, delivery: Delivery, purchase_id: int) -> int | None:
    """The allocation's id; None when no trainer can serve it (refused, its refund
    published after commit)."""

    def effect(session: Session) -> int | None:
        allocation = fulfilment.allocate_trainer(session, purchase_id, now=utcnow())
        return None if allocation is None else allocation.id

    return once(database, delivery, effect)


def schedule_sessions(
    database: Database, delivery: Delivery, allocation_id: int, *, window: int
) -> int:
    """The student's id, for the read-model refresh."""
    return once(
        database,
        delivery,
        lambda session: (
            fulfilment.schedule_window(
                session, allocation_id, now=utcnow(), window=window
            ).student_id
        ),
    )


def compensate_refund(database: Database, delivery: Delivery, payment_id: uuid.UUID) -> int:
    return once(database, delivery, lambda session: refunds.compensate(session, payment_id))


def reallocate_trainer(
    database: Database, delivery: Delivery, allocation_id: int, *, window: int
) -> int:
    """The student's id. The move asks first whether it is still needed."""

    def effect(session: Session) -> int:
        reallocation.reallocate(session, allocation_id, now=utcnow(), window=window)
        return session.get_one(fulfilment.Allocation, allocation_id).student_id

    return once(database, delivery, effect)
