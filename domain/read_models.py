"""What the API shows: a payment with its fulfilment state and timeline."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.errors import NotFound
from models import (
    Allocation,
    DeadLetter,
    DeadLetterStatus,
    DomainEvent,
    Payment,
    PaymentStatus,
    Purchase,
    SessionStatus,
    Trainer,
    TutoringSession,
)

UPCOMING_SHOWN = 7


def fulfilment_state(
    payment: Payment,
    purchase: Purchase | None,
    allocation: Allocation | None,
    sessions: int,
    open_dead_letters: int,
) -> str:
    if payment.status != PaymentStatus.SUCCEEDED:
        return {"pending": "awaiting_payment"}.get(payment.status, payment.status)
    if open_dead_letters:
        return "needs_attention"
    if sessions:
        return "scheduled"
    if allocation is not None:
        return "allocated"
    if purchase is not None:
        return "purchased"
    return "confirmed"


def payment_detail(session: Session, payment_id: uuid.UUID) -> dict[str, Any]:
    row = session.execute(
        select(Payment, Purchase, Allocation, Trainer)
        .outerjoin(Purchase, Purchase.payment_id == Payment.id)
        .outerjoin(Allocation, Allocation.purchase_id == Purchase.id)
        .outerjoin(Trainer, Trainer.id == Allocation.trainer_id)
        .where(Payment.id == payment_id)
    ).one_or_none()
    if row is None:
        raise NotFound("payment_not_found", "No payment has this id.", payment_id=str(payment_id))
    payment, purchase, allocation, trainer = row

    sessions: list[TutoringSession] = []
    scheduled = 0
    if allocation is not None:
        scheduled = (
            session.scalar(
                select(func.count()).where(
                    TutoringSession.allocation_id == allocation.id,
                    TutoringSession.status != SessionStatus.CANCELLED,
                )
            )
            or 0
        )
        sessions = list(
            session.scalars(
                select(TutoringSession)
                .where(
                    TutoringSession.allocation_id == allocation.id,
                    TutoringSession.status == SessionStatus.SCHEDULED,
                    TutoringSession.starts_at > utcnow(),
                )
                .order_by(TutoringSession.starts_at)
                .limit(UPCOMING_SHOWN)
            )
        )
    letters = list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.correlation_id == str(payment.id))
            .order_by(DeadLetter.id)
        )
    )
    events = session.scalars(
        select(DomainEvent).where(DomainEvent.correlation_id == payment.id).order_by(DomainEvent.id)
    )
    open_letters = sum(1 for d in letters if d.status == DeadLetterStatus.OPEN)
    return {
        "payment": payment,
        "fulfilment": {
            "state": fulfilment_state(payment, purchase, allocation, scheduled, open_letters),
            "purchase": purchase,
            "allocation": allocation
            and {
                "id": allocation.id,
                "status": allocation.status,
                "time_slot": allocation.time_slot,
                "sessions_total": allocation.sessions_total,
                "trainer": {"id": trainer.id, "name": trainer.name},
            },
            "sessions_scheduled": scheduled,
            "upcoming_sessions": sessions,
            "dead_letters": letters,
        },
        "timeline": list(events),
    }
