"""Checkout, confirmation and refund, one transaction each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain import idempotency
from domain.payments import Checkout, Confirmation, confirm_payment, start_checkout
from domain.refunds import Refund, refund_payment
from models import Database, Payment


@dataclass(frozen=True)
class CheckoutAnswer:
    """The checkout's answer: a new payment, or the answer stored under the key."""

    status: int
    payment: Payment | None = None
    stored_body: dict[str, Any] | None = None


def checkout(
    database: Database,
    order: Checkout,
    *,
    idempotency_key: str | None,
    fingerprint: str,
    render: Callable[[Payment], dict[str, Any]],
) -> CheckoutAnswer:
    """Start a checkout; with an Idempotency-Key, the same key and body get the same
    answer (`render` makes the body stored under the key, in the same transaction)."""
    with database.transaction() as session:
        if idempotency_key is not None:
            stored = idempotency.claim_key(session, idempotency_key, fingerprint)
            if stored is not None:
                return CheckoutAnswer(stored.status, stored_body=stored.body)
        payment = start_checkout(session, order)
        if idempotency_key is not None:
            idempotency.store_response(session, idempotency_key, 201, render(payment))
        return CheckoutAnswer(201, payment=payment)


def confirm(
    database: Database, payment_id: uuid.UUID, provider_payment_id: str, *, source: str
) -> Confirmation:
    """Confirm the payment; its chain is published after the commit."""
    with database.transaction() as session:
        return confirm_payment(session, payment_id, provider_payment_id, source=source)


def refund(
    database: Database,
    payment_id: uuid.UUID,
    *,
    source: str,
    provider_payment_id: str | None = None,
) -> Refund:
    """Refund the payment; its compensation is published after the commit."""
    with database.transaction() as session:
        return refund_payment(
            session, payment_id, source=source, provider_payment_id=provider_payment_id
        )
