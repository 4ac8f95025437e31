"""The task names, and the chains built from them by name: whoever publishes (the
outbox's dispatch, a replay) needs no task module, so no task imports another.
"""

from __future__ import annotations

from celery import Celery, chain
from celery.canvas import Signature

VERIFY_PAYMENT = "tutorflow.pipeline.verify_payment"
CREATE_PURCHASE = "tutorflow.pipeline.create_purchase"
ALLOCATE_TRAINER = "tutorflow.pipeline.allocate_trainer"
SCHEDULE_SESSIONS = "tutorflow.pipeline.schedule_sessions"
REFRESH_STUDENT_VIEWS = "tutorflow.pipeline.refresh_student_views"
COMPENSATE_REFUND = "tutorflow.pipeline.compensate_refund"
REFUND_UNSERVABLE = "tutorflow.pipeline.refund_unservable"
REALLOCATE_TRAINER = "tutorflow.pipeline.reallocate_trainer"
SEND_NOTIFICATION = "tutorflow.notifications.send"
RECORD_DEAD_LETTER = "tutorflow.dead_letters.record"
# An open letter's message in the dead_letter queue (celeryconfig.PARKED_QUEUE).
PARKED_DEAD_LETTER = "tutorflow.dead_letters.parked"
SETTLE_DEAD_LETTERS = "tutorflow.beat.settle_dead_letters"
# Set while a settle is asked for and has not yet started: a bulk replay or discard
# asks once, not once per letter (tasks.handoff, tasks.beat).
SETTLE_PENDING_KEY = "tutorflow:dead_letters:settle_pending"
# The fulfilment chain's steps that record their runs (models.StepRun), in order: all
# but its last link, refresh_student_views, which only touches the cache.
RECORDED_STEPS = (VERIFY_PAYMENT, CREATE_PURCHASE, ALLOCATE_TRAINER, SCHEDULE_SESSIONS)


def fulfilment_chain(app: Celery, payment_id: str) -> Signature:
    return chain(
        app.signature(
            VERIFY_PAYMENT, (payment_id,), {"correlation_id": payment_id}, immutable=True
        ),
        app.signature(CREATE_PURCHASE, kwargs={"correlation_id": payment_id}),
        app.signature(ALLOCATE_TRAINER, kwargs={"correlation_id": payment_id}),
        app.signature(SCHEDULE_SESSIONS, kwargs={"correlation_id": payment_id}),
        app.signature(REFRESH_STUDENT_VIEWS, kwargs={"correlation_id": payment_id}),
        app=app,
    )


def compensation_chain(app: Celery, payment_id: str) -> Signature:
    return chain(
        app.signature(
            COMPENSATE_REFUND, (payment_id,), {"correlation_id": payment_id}, immutable=True
        ),
        app.signature(REFRESH_STUDENT_VIEWS, kwargs={"correlation_id": payment_id}),
        app=app,
    )


def reallocation_chain(app: Celery, allocation_id: int, payment_id: str) -> Signature:
    return chain(
        app.signature(
            REALLOCATE_TRAINER, (allocation_id,), {"correlation_id": payment_id}, immutable=True
        ),
        app.signature(REFRESH_STUDENT_VIEWS, kwargs={"correlation_id": payment_id}),
        app=app,
    )
