"""The provider's signed events, recorded and applied in one transaction each.

`payment_intent.succeeded` confirms (the chain's verify step still reads the intent:
one code path grants, whoever said "paid" first); `payment_intent.payment_failed` fails
a pending or confirming payment; `charge.refunded` refunds and compensates without
calling the provider back. Other types are acknowledged and ignored. An event id is
recorded with its effect: a redelivery is a no-op, a failure leaves the id free for the
provider's next delivery.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text

from domain.errors import Conflict
from domain.payments import fail, request_confirmation
from domain.refunds import refund_payment
from models import Database, Payment

HANDLED = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")


@dataclass(frozen=True)
class WebhookOutcome:
    duplicate: bool
    handled: bool
    payment_id: uuid.UUID | None = None
    status: str | None = None


def _intent_of(event_type: str, obj: dict[str, Any]) -> str | None:
    """The PaymentIntent an event we act on is about (a refunded charge names its own)."""
    if event_type not in HANDLED:
        return None
    intent_id = obj.get("payment_intent") if event_type == "charge.refunded" else obj.get("id")
    return str(intent_id) if intent_id else None


# The event's row, with the payment its intent names, in one statement; no row back: a
# delivery seen before. Plain SQL: an INSERT … ON CONFLICT built with pg_insert has no
# cache key in SQLAlchemy and was compiled afresh on every delivery (BENCHMARKS.md,
# "Issue 25").
_FIRST_DELIVERY = text(
    "INSERT INTO webhook_events (id, type, payment_id)"
    " VALUES (:id, :type, (SELECT id FROM payments WHERE provider_payment_id = :intent_id))"
    " ON CONFLICT DO NOTHING RETURNING payment_id"
).columns(payment_id=Payment.id.type)


def receive(
    database: Database,
    *,
    event_id: str,
    event_type: str,
    obj: dict[str, Any],
    hold_minutes: float,
) -> WebhookOutcome:
    with database.transaction() as session:
        intent_id = _intent_of(event_type, obj)
        first_delivery = session.execute(
            _FIRST_DELIVERY, {"id": event_id, "type": event_type, "intent_id": intent_id}
        ).one_or_none()
        if first_delivery is None:
            return WebhookOutcome(duplicate=True, handled=event_type in HANDLED)
        payment_id: uuid.UUID | None = first_delivery.payment_id
        if payment_id is None:  # not a type we act on, or not ours (another integration)
            return WebhookOutcome(duplicate=False, handled=False)
        claimed = (obj.get("metadata") or {}).get("payment_id")
        if claimed not in (None, str(payment_id)):  # the event's row is rolled back
            raise Conflict(
                "provider_metadata_mismatch",
                "The event's payment id does not match its PaymentIntent.",
                payment_intent=intent_id,
            )
        if event_type == "payment_intent.succeeded":
            confirmation = request_confirmation(
                session,
                payment_id,
                student_id=None,
                source="webhook",
                hold_minutes=hold_minutes,
            )
            return WebhookOutcome(False, True, payment_id, confirmation.payment.status)
        if event_type == "payment_intent.payment_failed":
            reason = (obj.get("last_payment_error") or {}).get("message") or "Payment failed."
            fail(session, payment_id, reason=str(reason), source="webhook")
        else:
            refund_payment(session, payment_id, source="webhook")
        status = session.scalar(select(Payment.status).where(Payment.id == payment_id))
        return WebhookOutcome(False, True, payment_id, status)
