"""Checkout, "I paid" and refund: the provider asked outside any transaction, then one
transaction each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.provider import PaymentProvider
from domain import idempotency
from domain.availability import drop_hold, place_hold
from domain.clock import utcnow
from domain.dead_letters import LetterFilter, discard, open_letter_ids
from domain.events import EventType, record_event
from domain.payments import (
    Confirmation,
    Order,
    owned_payment,
    quote,
    request_confirmation,
    start_checkout,
)
from domain.refunds import Refund, refund_payment, still_to_refund
from models import Database, Payment

# Payment ids derived from (student, Idempotency-Key): two concurrent requests with one
# key name the same payment, hence the same PaymentIntent at the provider.
_IDEMPOTENT_IDS = uuid.UUID("0b6f6e2e-54b1-4c47-9f63-7c2f0f5f2a11")


@dataclass(frozen=True)
class CheckoutAnswer:
    """The checkout's answer: a new payment and its client secret, or the answer
    stored under the Idempotency-Key."""

    status: int
    body: dict[str, Any]


def checkout(
    database: Database,
    provider: PaymentProvider,
    order: Order,
    *,
    idempotency_key: str | None,
    fingerprint: str,
    render: Callable[[Payment, str | None, datetime], dict[str, Any]],
    hold_minutes: float,
) -> CheckoutAnswer:
    """Quote the catalogue price and hold a trainer's place at the time (for
    `hold_minutes`), create the provider's PaymentIntent (idempotency key: the payment
    id), then write the pending payment. A provider outage raises ProviderUnavailable
    with nothing left written (the hold is dropped; the API answers 503)."""
    if idempotency_key is not None:
        # Keys are the student's own: another student's key names nothing of theirs.
        idempotency_key = f"{order.student_id}:{idempotency_key}"
        with database.transaction() as session:
            stored = idempotency.stored_answer(session, idempotency_key, fingerprint)
        if stored is not None:
            return CheckoutAnswer(stored.status, stored.body)
        payment_id = uuid.uuid5(_IDEMPOTENT_IDS, idempotency_key)
    else:
        payment_id = uuid.uuid4()
    with database.transaction() as session:
        price = quote(session, order)
        # A trainer's place at the time, for the tier's span: 409 slot_unavailable (and
        # nothing written, nothing asked of the provider) when no trainer can serve it.
        hold = place_hold(
            session,
            payment_id=payment_id,
            student_id=order.student_id,
            course_id=order.course_id,
            tier=order.tier,
            slot=order.time_slot,
            now=utcnow(),
            hold_minutes=hold_minutes,
        )
    try:
        intent = provider.create_intent(
            amount_cents=price.amount_cents, currency=price.currency, payment_id=str(payment_id)
        )
    except Exception:
        with database.transaction() as session:
            drop_hold(session, payment_id)  # no checkout: the place is free again
        raise
    with database.transaction() as session:
        if idempotency_key is not None:
            stored = idempotency.claim_key(session, idempotency_key, fingerprint)
            if stored is not None:  # a concurrent twin won
                return CheckoutAnswer(stored.status, stored.body)
        payment = start_checkout(
            session, order, payment_id=payment_id, provider_payment_id=intent.id, price=price
        )
        body = render(payment, intent.client_secret, hold.expires_at)
        if idempotency_key is not None:
            idempotency.store_response(session, idempotency_key, 201, body)
    return CheckoutAnswer(201, body)


def confirm(
    database: Database,
    payment_id: uuid.UUID,
    *,
    student_id: int | None,
    source: str,
    hold_minutes: float,
) -> Confirmation:
    """The student's "I paid": the payment goes to `confirming` (its hold kept for
    `hold_minutes` more); the chain, whose first step asks the provider, is published
    after the commit."""
    with database.transaction() as session:
        return request_confirmation(
            session, payment_id, student_id=student_id, source=source, hold_minutes=hold_minutes
        )


def refund(
    database: Database,
    provider: PaymentProvider,
    payment_id: uuid.UUID,
    *,
    source: str = "admin",
    then: Callable[[Session], None] | None = None,
) -> Refund:
    """A refund: the money goes back at the provider first (idempotent per payment),
    then the payment is refunded and its compensation published after commit. `then`
    adds to that transaction (the give-up's event)."""
    with database.transaction() as session:
        payment = owned_payment(session, payment_id, None)
        if not still_to_refund(payment):
            return Refund(payment, None)
        intent_id = payment.provider_payment_id
    if intent_id is not None:
        provider.refund(intent_id, payment_id=str(payment_id))
    with database.transaction() as session:
        refunded = refund_payment(session, payment_id, source=source)
        if then is not None and refunded.outbox is not None:
            then(session)
        return refunded


def give_up_allocation(
    database: Database, provider: PaymentProvider, payment_id: uuid.UUID, *, hours: float
) -> Refund:
    """No trainer found for `hours`: refund at the provider, say why on the timeline
    (the student sees it live), and close the letters the allocation step left."""

    def say_why(session: Session) -> None:
        payment = session.get_one(Payment, payment_id)
        record_event(
            session,
            correlation_id=payment_id,
            student_id=payment.student_id,
            event_type=EventType.ALLOCATION_GIVEN_UP,
            payload={"reason": "no_trainer_available", "after_hours": hours},
        )
        for letter_id in open_letter_ids(session, LetterFilter(correlation_id=str(payment_id))):
            discard(session, letter_id)

    return refund(database, provider, payment_id, source="allocation_give_up", then=say_why)
