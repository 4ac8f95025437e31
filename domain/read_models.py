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


def list_dead_letters(
    session: Session,
    *,
    status: str | None = None,
    task_name: str | None = None,
    correlation_id: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> tuple[list[DeadLetter], int]:
    """One page of dead letters, newest first, and the total matching the filters."""
    conditions = []
    if status:
        conditions.append(DeadLetter.status == status)
    if task_name:
        conditions.append(DeadLetter.task_name == task_name)
    if correlation_id:
        conditions.append(DeadLetter.correlation_id == correlation_id)
    total = session.scalar(select(func.count()).select_from(DeadLetter).where(*conditions)) or 0
    letters = session.scalars(
        select(DeadLetter)
        .where(*conditions)
        .order_by(DeadLetter.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    return list(letters), total


def get_dead_letter(session: Session, letter_id: int) -> DeadLetter:
    letter = session.get(DeadLetter, letter_id)
    if letter is None:
        raise NotFound("dead_letter_not_found", "No dead letter has this id.", id=letter_id)
    return letter
