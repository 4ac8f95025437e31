"""The fulfilment chain: verify_payment → create_purchase → allocate_trainer →
schedule_sessions → refresh_student_views. Each task does Celery's part (the base task:
retries, acks, dead letters; `Ignore` to end a chain); its use case (actions.steps) owns
the transaction and the inbox row. Every step receives the payment id as
`correlation_id` and returns what the next step needs, even on redelivery.
"""

from __future__ import annotations

import uuid

from celery.exceptions import Ignore

from actions import payments as actions_payments
from actions import steps
from core.provider import ProviderUnavailable
from domain import payments
from domain.errors import TransientStepError
from domain.events import EventType
from tasks import chains
from tasks.base import PipelineTask, step


@step(chains.VERIFY_PAYMENT, max_retries=8)
def verify_payment(self: PipelineTask, payment_id: str, *, correlation_id: str) -> str:
    """No inbox row: the payment's own states make it idempotent (a verified payment is
    verified again at once; a settled one stops the chain), and a payment that went back
    to pending and is confirmed again must be asked about again."""
    tutorflow = self.tutorflow
    verdict = steps.verify_payment(
        tutorflow.database,
        tutorflow.provider,
        self.delivery(correlation_id),
        uuid.UUID(payment_id),
    )
    if verdict != payments.Verdict.VERIFIED:
        # Committed (failed, or back to pending): nothing is granted. Ignore acks the
        # message and sends none of the chain's later links.
        raise Ignore(f"payment {payment_id}: {verdict}")
    return payment_id


@step(
    chains.CREATE_PURCHASE,
    max_retries=3,
    consumes=EventType.PAYMENT_VERIFIED,
)
def create_purchase(self: PipelineTask, payment_id: str, *, correlation_id: str) -> int:
    return steps.create_purchase(
        self.tutorflow.database, self.delivery(correlation_id), uuid.UUID(payment_id)
    )


@step(
    chains.ALLOCATE_TRAINER,
    max_retries=5,
    consumes=EventType.PURCHASE_CREATED,
)
def allocate_trainer(self: PipelineTask, purchase_id: int, *, correlation_id: str) -> int:
    allocation_id = steps.allocate_trainer(
        self.tutorflow.database, self.delivery(correlation_id), purchase_id
    )
    if allocation_id is None:
        # Committed: refused, its refund published. The chain stops here, acked.
        raise Ignore(f"purchase {purchase_id}: no trainer can serve it, refunding")
    return allocation_id


@step(
    chains.SCHEDULE_SESSIONS,
    max_retries=3,
    consumes=EventType.TRAINER_ALLOCATED,
)
def schedule_sessions(self: PipelineTask, allocation_id: int, *, correlation_id: str) -> int:
    tutorflow = self.tutorflow
    return steps.schedule_sessions(
        tutorflow.database,
        self.delivery(correlation_id),
        allocation_id,
        window=tutorflow.settings.session_window,
    )


@step(
    chains.REFRESH_STUDENT_VIEWS,
    max_retries=3,
    dead_letter_on_failure=False,
)
def refresh_student_views(self: PipelineTask, student_id: int, *, correlation_id: str) -> None:
    # Unlike the best-effort invalidation after each step, this one raises on a Redis
    # error, so it is retried: the home screen must not stay stale.
    self.tutorflow.cache.invalidate_and_announce(
        [(student_id, {"type": "STUDENT_VIEWS_REFRESHED", "payment_id": correlation_id})]
    )


@step(
    chains.COMPENSATE_REFUND,
    max_retries=5,
    consumes=EventType.PAYMENT_REFUNDED,
)
def compensate_refund(self: PipelineTask, payment_id: str, *, correlation_id: str) -> int:
    return steps.compensate_refund(
        self.tutorflow.database, self.delivery(correlation_id), uuid.UUID(payment_id)
    )


@step(chains.REFUND_UNSERVABLE, max_retries=8)
def refund_unservable(self: PipelineTask, payment_id: str, *, correlation_id: str) -> str:
    """A paid checkout that no trainer can serve: the money goes back at the provider
    (idempotent per payment), then the payment is refunded and compensated. No inbox
    row: a refunded payment is refunded again as a no-op."""
    try:
        actions_payments.refund(
            self.tutorflow.database,
            self.tutorflow.provider,
            uuid.UUID(payment_id),
            source="unservable",
        )
    except ProviderUnavailable as exc:
        raise TransientStepError(str(exc)) from exc
    return payment_id


@step(chains.REALLOCATE_TRAINER, max_retries=5)
def reallocate_trainer(self: PipelineTask, allocation_id: int, *, correlation_id: str) -> int:
    """No inbox row: an allocation can be moved more than once in its life, and the move
    itself asks first whether it is still needed (domain.reallocation)."""
    tutorflow = self.tutorflow
    return steps.reallocate_trainer(
        tutorflow.database,
        self.delivery(correlation_id),
        allocation_id,
        window=tutorflow.settings.session_window,
    )
