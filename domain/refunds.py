"""Refunds: the payment becomes refunded, then a compensation undoes what it started.

Correct in any order. The refund updates the payment row; every forward step share-locks
that row and stops if it is refunded (domain.fulfilment.lock_live_payment). The
compensation runs after the refund's commit and locks the row too, so it sees every
forward effect that committed before the refund, and none can commit after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain import notifications
from domain.bookings import ahead_of, change_load
from domain.clock import utcnow
from domain.errors import Conflict, NotFound, PermanentStepError
from domain.events import EventType, record_event
from models import (
    HOLDING_STATUSES,
    Allocation,
    AllocationStatus,
    OutboxKind,
    OutboxMessage,
    Payment,
    PaymentStatus,
    Purchase,
    SessionStatus,
    TutoringSession,
    outbox,
)


@dataclass(frozen=True)
class Refund:
    payment: Payment
    # The compensation's hand-off (published after commit by the channel); None when the
    # payment was already refunded and nothing changed.
    outbox: OutboxMessage | None


# A confirming payment too: the provider may refund before we verified it, and the
# verify step then finds it refunded and grants nothing.
REFUNDABLE = (PaymentStatus.SUCCEEDED, PaymentStatus.CONFIRMING)


def still_to_refund(payment: Payment) -> bool:
    """True if `payment` can be refunded now, False if it is refunded already (nothing
    to do); 409 payment_not_refundable for any other status."""
    if payment.status in REFUNDABLE:
        return True
    if payment.status == PaymentStatus.REFUNDED:
        return False
    raise Conflict(
        "payment_not_refundable",
        f"A {payment.status} payment cannot be refunded.",
        payment_id=str(payment.id),
        status=payment.status,
    )


def refund_payment(
    session: Session,
    payment_id: uuid.UUID,
    *,
    source: str,
    provider_payment_id: str | None = None,
) -> Refund:
    """succeeded → refunded with its event and outbox row; repeats change nothing.

    With `provider_payment_id` (the webhook), it must be the one that confirmed it.
    """
    now = utcnow()
    if provider_payment_id is not None:
        current = session.scalar(
            select(Payment.provider_payment_id).where(Payment.id == payment_id)
        )
        if current is not None and current != provider_payment_id:
            raise Conflict(
                "provider_payment_id_mismatch",
                "The refund names another provider payment id.",
                payment_id=str(payment_id),
            )
    payment = session.scalars(
        update(Payment)
        .where(Payment.id == payment_id, Payment.status.in_(REFUNDABLE))
        .values(status=PaymentStatus.REFUNDED, refunded_at=now, updated_at=now)
        .returning(Payment)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).one_or_none()
    if payment is None:
        existing = session.get(Payment, payment_id, populate_existing=True)
        if existing is None:
            raise NotFound(
                "payment_not_found", "No payment has this id.", payment_id=str(payment_id)
            )
        still_to_refund(existing)  # raises for a status that cannot be refunded
        return Refund(existing, None)  # refunded already: nothing changes
    record_event(
        session,
        correlation_id=payment.id,
        student_id=payment.student_id,
        event_type=EventType.PAYMENT_REFUNDED,
        payload={"source": source},
    )
    message = outbox.write(
        session,
        OutboxKind.START_COMPENSATION,
        correlation_id=payment.id,
        payload={"payment_id": str(payment.id)},
    )
    session.flush()
    return Refund(payment, message)


def compensate(session: Session, payment_id: uuid.UUID) -> int:
    """Cancel future sessions, end the allocation (freeing the trainer's place and slot),
    deactivate the purchase, each with its event. Idempotent. Returns the student id."""
    now = utcnow()
    payment = session.scalar(
        select(Payment)
        .where(Payment.id == payment_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if payment is None:
        raise PermanentStepError(f"payment {payment_id} does not exist")
    if payment.status != PaymentStatus.REFUNDED:
        raise PermanentStepError(f"payment {payment_id} is {payment.status}, not refunded")

    def event(event_type: EventType, **payload: object) -> None:
        record_event(
            session,
            correlation_id=payment.id,
            student_id=payment.student_id,
            event_type=event_type,
            payload=payload,
        )

    purchase = session.scalar(
        select(Purchase).where(Purchase.payment_id == payment.id).with_for_update()
    )
    allocation = (
        session.scalar(
            select(Allocation).where(Allocation.purchase_id == purchase.id).with_for_update()
        )
        if purchase is not None
        else None
    )
    cancelled: Sequence[int] = ()
    if allocation is not None and allocation.status in HOLDING_STATUSES:
        cancelled = session.scalars(
            update(TutoringSession)
            .where(ahead_of(allocation.id, now))
            .values(status=SessionStatus.CANCELLED)
            .returning(TutoringSession.id)
        ).all()
        event(EventType.SESSIONS_CANCELLED, allocation_id=allocation.id, count=len(cancelled))
        allocation.status = AllocationStatus.CANCELLED
        allocation.ended_at = now
        change_load(session, allocation.trainer_id, -1)
        event(
            EventType.ALLOCATION_ENDED,
            allocation_id=allocation.id,
            trainer_id=allocation.trainer_id,
        )
    elif allocation is not None and allocation.status == AllocationStatus.WAITING:
        # No trainer place and no future session left to give back (start_waiting).
        allocation.status = AllocationStatus.CANCELLED
        allocation.ended_at = now
        event(EventType.ALLOCATION_ENDED, allocation_id=allocation.id, trainer_id=None)
    if purchase is not None and purchase.is_active:
        purchase.is_active = False
        purchase.deactivated_at = now
        event(EventType.PURCHASE_DEACTIVATED, purchase_id=purchase.id)
    notifications.refunded_notice(
        session,
        payment.id,
        student_id=payment.student_id,
        amount_cents=payment.amount_cents,
        currency=payment.currency,
        sessions_cancelled=len(cancelled),
    )
    event(EventType.COMPENSATION_DONE)
    return payment.student_id
