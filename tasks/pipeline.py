"""The fulfilment chain: create_purchase → allocate_trainer → schedule_sessions →
refresh_student_views. Each step is thin: the base task gives it a transaction and
an inbox row; the domain functions do the work. Every step receives the payment id
as `correlation_id` and returns what the next step needs, even on redelivery.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import chain
from celery.canvas import Signature

from core.cache import Cache
from domain import fulfilment, refunds
from domain.clock import utcnow
from domain.events import EventType
from tasks.base import PipelineTask
from tasks.celery_app import celery_app


def step(
    name: str,
    *,
    max_retries: int,
    consumes: EventType | None = None,
    dead_letter_on_failure: bool = True,
) -> Any:
    """A pipeline step: the base task, retries with the configured backoff."""
    settings = celery_app.settings
    return celery_app.task(
        base=PipelineTask,
        bind=True,
        name=name,
        max_retries=max_retries,
        consumes=consumes,
        dead_letter_on_failure=dead_letter_on_failure,
        retry_backoff=settings.retry_backoff,
        retry_backoff_max=settings.retry_backoff_max,
        retry_jitter=settings.retry_jitter,
    )


@step(
    "tutorflow.pipeline.create_purchase",
    max_retries=3,
    consumes=EventType.PURCHASE_CONFIRMED,
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
    return self.run_step(
        lambda session: fulfilment.allocate_trainer(session, purchase_id).id,
        correlation_id=correlation_id,
    )


@step(
    "tutorflow.pipeline.schedule_sessions",
    max_retries=3,
    consumes=EventType.TRAINER_ALLOCATED,
)
def schedule_sessions(self: PipelineTask, allocation_id: int, *, correlation_id: str) -> int:
    def effect(session) -> int:
        fulfilment.schedule_sessions(
            session, allocation_id, now=utcnow(), window=celery_app.settings.session_window
        )
        return session.get_one(fulfilment.Allocation, allocation_id).student_id

    return self.run_step(effect, correlation_id=correlation_id)


@step(
    "tutorflow.pipeline.refresh_student_views",
    max_retries=3,
    dead_letter_on_failure=False,
)
def refresh_student_views(self: PipelineTask, student_id: int, *, correlation_id: str) -> None:
    # Unlike the best-effort invalidation after each step, this one raises on a Redis
    # error, so it is retried: the home screen must not stay stale.
    Cache.for_url(celery_app.settings.cache_url).invalidate_and_announce(
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


def compensation_chain(payment_id: str) -> Signature:
    return chain(
        compensate_refund.si(payment_id, correlation_id=payment_id),
        refresh_student_views.s(correlation_id=payment_id),
    )


def fulfilment_chain(payment_id: str) -> Signature:
    return chain(
        create_purchase.si(payment_id, correlation_id=payment_id),
        allocate_trainer.s(correlation_id=payment_id),
        schedule_sessions.s(correlation_id=payment_id),
        refresh_student_views.s(correlation_id=payment_id),
    )
