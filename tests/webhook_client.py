"""Send webhook deliveries the way Stripe does: its event shape, its signature scheme."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from sandbox.app import sign

SECRET = "whsec_test"  # one of the test run's STRIPE_WEBHOOK_SECRETS
URL = "/api/v1/webhooks/stripe"


def stripe_event(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }


def intent_succeeded(payment: Any, event_id: str | None = None) -> dict[str, Any]:
    return stripe_event(
        "payment_intent.succeeded",
        {
            "id": payment.provider_payment_id,
            "object": "payment_intent",
            "status": "succeeded",
            "amount": payment.amount_cents,
            "currency": payment.currency.lower(),
            "metadata": {"payment_id": str(payment.id)},
        },
        event_id,
    )


def charge_refunded(payment: Any, event_id: str | None = None) -> dict[str, Any]:
    return stripe_event(
        "charge.refunded",
        {
            "id": f"ch_{uuid.uuid4().hex[:24]}",
            "object": "charge",
            "payment_intent": payment.provider_payment_id,
            "refunded": True,
            "amount_refunded": payment.amount_cents,
            "metadata": {"payment_id": str(payment.id)},
        },
        event_id,
    )


def signed(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    return {"Stripe-Signature": sign(body, secret, t), "Content-Type": "application/json"}


def deliver(client: Any, event: dict[str, Any], **sign_options: Any) -> Any:
    body = json.dumps(event).encode()
    return client.post(URL, data=body, headers=signed(body, **sign_options))
