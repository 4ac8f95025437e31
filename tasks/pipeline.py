"""The fulfilment chain: verify_payment → create_purchase → allocate_trainer →
schedule_sessions → refresh_student_views. Each step is thin: the base task gives it a
transaction and an inbox row; the domain functions do the work. Every step receives the
payment id as `correlation_id` and returns what the next step needs, even on redelivery.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import chain
from celery.canvas import Signature
from celery.exceptions import Ignore

from actions import payments as actions_payments
from core.cache import Cache
from core.provider import PaymentProvider, ProviderRejected, ProviderUnavailable
from domain import fulfilment, payments, reallocation, refunds
from domain.clock import utcnow
from domain.errors import PermanentStepError, TransientStepError
from domain.events import EventType
from tasks.base import PipelineTask
from tasks.celery_app import celery_app


def step(
    name: str,
    *,
    max_retries: int,
    consumes: EventType | None = None,
    dead_letter_on_failure: bool = True,
    backoff_max: int | None = None,
    base: type[PipelineTask] = PipelineTask,
) -> Any:
    """A pipeline step: the base task (or a subclass), retries with the configured
    backoff (capped at `backoff_max` seconds for this step if given)."""
    settings = celery_app.settings
    return celery_app.task(
        base=base,
        bind=True,
        name=name,
        max_retries=max_retries,
        consumes=consumes,
        dead_letter_on_failure=dead_letter_on_failure,
        retry_backoff=settings.retry_backoff,
        retry_backoff_max=backoff_max or settings.retry_backoff_max,
        retry_jitter=settings.retry_jitter,
    )


def ask_provider(payment_id: uuid.UUID) -> payments.ProviderReport | None:
    """The provider's word on the payment's intent, asked outside any transaction;
    None when the payment no longer waits for it (verified already, or settled)."""
    with celery_app.database.session() as session:
        payment = session.get(payments.Payment, payment_id)
        if payment is None:
            raise PermanentStepError(f"payment {payment_id} does not exist")
        if payment.status != payments.PaymentStatus.CONFIRMING:
            return None
        intent_id = payment.provider_payment_id
    if intent_id is None:
        raise PermanentStepError(f"payment {payment_id} has no provider payment id")
    try:
        intent = PaymentProvider.for_settings(celery_app.settings).retrieve_intent(intent_id)
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


@step(
    "tutorflow.pipeline.verify_payment",
    max_retries=8,
    backoff_max=celery_app.settings.provider_retry_backoff_max,
)
def verify_payment(self: PipelineTask, payment_id: str, *, correlation_id: str) -> str:
    """No inbox row: the payment's own states make it idempotent (a verified payment is
    verified again at once; a settled one stops the chain), and a payment that went back
    to pending and is confirmed again must be asked about again."""
    report = ask_provider(uuid.UUID(payment_id))

    def effect(session: Any) -> str:
        if report is None:
            return str(payments.verify_again(session, uuid.UUID(payment_id)))
        return str(payments.verify(session, uuid.UUID(payment_id), report))

    verdict = self.run_step(effect, correlation_id=correlation_id)
    if verdict != payments.Verdict.VERIFIED:
        # Committed (failed, or back to pending): nothing is granted. Ignore acks the
        # message and sends none of the chain's later links.
        raise Ignore(f"payment {payment_id}: {verdict}")
    return payment_id


@step(
    "tutorflow.pipeline.create_purchase",
    max_retries=3,
    consumes=EventType.PAYMENT_VERIFIED,
)
def create_purchase(self: PipelineTask, payment_id: str, *, correlation_id: str) -> int:
    return self.run_step(
        lambda session: fulfilment.create_purchase(session, uuid.UUID(payment_id)).id,
        correlation_id=correlation_id,
    )


@step(
    "tutorflow.pipeline.allocate_trainer",
    max_retries=5,
    consumes=EventType.PURCHASE_CREATED,
)
def allocate_trainer(self: PipelineTask, purchase_id: int, *, correlation_id: str) -> int:
    def effect(session: Any) -> int | None:
        allocation = fulfilment.allocate_trainer(session, purchase_id, now=utcnow())
        return None if allocation is None else allocation.id

    allocation_id = self.run_step(effect, correlation_id=correlation_id)
    if allocation_id is None:
        # Committed: refused, its refund published. The chain stops here, acked.
        raise Ignore(f"purchase {purchase_id}: no trainer can serve it, refunding")
    return allocation_id


@step(
    "tutorflow.pipeline.schedule_sessions",
    max_retries=3,
    consumes=EventType.TRAINER_ALLOCATED,
)
def schedule_sessions(self: PipelineTask, allocation_id: int, *, correlation_id: str) -> int:
    def effect(session) -> int:
        return fulfilment.schedule_window(
            session, allocation_id, now=utcnow(), window=celery_app.settings.session_window
        ).student_id

    return self.run_step(effect, correlation_id=correlation_id)


@step(
    "tutorflow.pipeline.refresh_student_views",
    max_retries=3,
    dead_letter_on_failure=False,
)
def refresh_student_views(self: PipelineTask, student_id: int, *, correlation_id: str) -> None:
    # Unlike the best-effort invalidation after each step, this one raises on a Redis
    # error, so it is retried: the home screen must not stay stale.
    Cache.for_settings(celery_app.settings).invalidate_and_announce(
        [(student_id, {"type": "STUDENT_VIEWS_REFRESHED", "payment_id": correlation_id})]
    )


@step(
    "tutorflow.pipeline.compensate_refund",
    max_retries=5,
    consumes=EventType.PAYMENT_REFUNDED,
)
def compensate_refund(self: PipelineTask, payment_id: str, *, correlation_id: str) -> int:
    return self.run_step(
        lambda session: refunds.compensate(session, uuid.UUID(payment_id)),
        correlation_id=correlation_id,
    )


@step(
    "tutorflow.pipeline.refund_unservable",
    max_retries=8,
    backoff_max=celery_app.settings.provider_retry_backoff_max,
)
def refund_unservable(self: PipelineTask, payment_id: str, *, correlation_id: str) -> str:
    """A paid checkout that no trainer can serve: the money goes back at the provider
    (idempotent per payment), then the payment is refunded and compensated. No inbox
    row: a refunded payment is refunded again as a no-op."""
    try:
        actions_payments.refund(
            celery_app.database,
            PaymentProvider.for_settings(celery_app.settings),
            uuid.UUID(payment_id),
            source="unservable",
        )
    except ProviderUnavailable as exc:
        raise TransientStepError(str(exc)) from exc
    return payment_id


@step("tutorflow.pipeline.reallocate_trainer", max_retries=5)
def reallocate_trainer(self: PipelineTask, allocation_id: int, *, correlation_id: str) -> int:
    """No inbox row: an allocation can be moved more than once in its life, and the move
    itself asks first whether it is still needed (domain.reallocation)."""

    def effect(session: Any) -> int:
        reallocation.reallocate(
            session, allocation_id, now=utcnow(), window=celery_app.settings.session_window
        )
        return session.get_one(fulfilment.Allocation, allocation_id).student_id

    return self.run_step(effect, correlation_id=correlation_id)


def reallocation_chain(allocation_id: int, payment_id: str) -> Signature:
    return chain(
        reallocate_trainer.si(allocation_id, correlation_id=payment_id),
        refresh_student_views.s(correlation_id=payment_id),
    )


def compensation_chain(payment_id: str) -> Signature:
    return chain(
        compensate_refund.si(payment_id, correlation_id=payment_id),
        refresh_student_views.s(correlation_id=payment_id),
    )


def fulfilment_chain(payment_id: str) -> Signature:
    return chain(
        verify_payment.si(payment_id, correlation_id=payment_id),
        create_purchase.s(correlation_id=payment_id),
        allocate_trainer.s(correlation_id=payment_id),
        schedule_sessions.s(correlation_id=payment_id),
        refresh_student_views.s(correlation_id=payment_id),
    )
