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

from sqlalchemy import text

from domain.errors import Conflict
from domain.payments import fail, payment_for_intent, request_confirmation
from domain.refunds import refund_payment
from models import Database, Payment

HANDLED = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")


@dataclass(frozen=True)
class WebhookOutcome:
    duplicate: bool
    handled: bool
    payment_id: uuid.UUID | None = None
    status: str | None = None


def _payment_of(session: Any, event_type: str, obj: dict[str, Any]) -> Payment | None:
    """The payment an event is about: by the intent (or the refunded charge's intent)
    it names; the metadata's payment id must agree when present."""
    intent_id = obj.get("payment_intent") if event_type == "charge.refunded" else obj.get("id")
    payment = payment_for_intent(session, str(intent_id)) if intent_id else None
    claimed = (obj.get("metadata") or {}).get("payment_id")
    if payment is not None and claimed not in (None, str(payment.id)):
        raise Conflict(
            "provider_metadata_mismatch",
            "The event's payment id does not match its PaymentIntent.",
            payment_intent=intent_id,
        )
    return payment


# Plain SQL: built with pg_insert, an INSERT … ON CONFLICT has no cache key in SQLAlchemy
# and was compiled afresh on every delivery (BENCHMARKS.md, "Issue 25").
_FIRST_DELIVERY = text(
    "INSERT INTO webhook_events (id, type, payment_id)"
    " VALUES (:id, :type, CAST(:payment_id AS uuid)) ON CONFLICT DO NOTHING RETURNING id"
)


def receive(
    database: Database,
    *,
    event_id: str,
    event_type: str,
    obj: dict[str, Any],
    hold_minutes: float,
) -> WebhookOutcome:
    with database.transaction() as session:
        # The payment first (a read), so the event's row is written once, with it.
        payment = _payment_of(session, event_type, obj) if event_type in HANDLED else None
        first_delivery = session.scalar(
            _FIRST_DELIVERY,
            {
                "id": event_id,
                "type": event_type,
                "payment_id": str(payment.id) if payment is not None else None,
            },
        )
        if first_delivery is None:
            return WebhookOutcome(duplicate=True, handled=event_type in HANDLED)
        if payment is None:  # not a type we act on, or not ours (another integration)
            return WebhookOutcome(duplicate=False, handled=False)
        if event_type == "payment_intent.succeeded":
            confirmation = request_confirmation(
                session,
                payment.id,
                student_id=None,
                source="webhook",
                hold_minutes=hold_minutes,
            )
            return WebhookOutcome(False, True, payment.id, confirmation.payment.status)
        if event_type == "payment_intent.payment_failed":
            reason = (obj.get("last_payment_error") or {}).get("message") or "Payment failed."
            fail(session, payment.id, reason=str(reason), source="webhook")
        else:
            refund_payment(session, payment.id, source="webhook")
        session.refresh(payment)
        return WebhookOutcome(False, True, payment.id, payment.status)
