"""The payment provider's event, recorded and applied in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.payments import confirm_payment
from domain.refunds import refund_payment
from models import Database, WebhookEvent


@dataclass(frozen=True)
class WebhookOutcome:
    duplicate: bool
    payment_id: uuid.UUID
    status: str | None = None


def receive(
    database: Database, *, event_id: str, event_type: str, data: dict[str, Any]
) -> WebhookOutcome:
    """Apply a verified provider event once: its id is recorded in the same transaction
    as its effect, so a failure leaves the id free for the provider's next delivery and
    a success makes every redelivery a no-op."""
    payment_id: uuid.UUID = data["payment_id"]
    with database.transaction() as session:
        first_delivery = session.scalar(
            pg_insert(WebhookEvent)
            .values(id=event_id, type=event_type, payment_id=payment_id)
            .on_conflict_do_nothing()
            .returning(WebhookEvent.id)
        )
        if first_delivery is None:
            return WebhookOutcome(duplicate=True, payment_id=payment_id)
        if event_type == "payment.succeeded":
            payment = confirm_payment(
                session, payment_id, data["provider_payment_id"], source="webhook"
            ).payment
        else:  # payment.refunded
            payment = refund_payment(
                session,
                payment_id,
                source="webhook",
                provider_payment_id=data["provider_payment_id"],
            ).payment
        return WebhookOutcome(duplicate=False, payment_id=payment.id, status=payment.status)
