"""Send signed webhook deliveries the way the provider does."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from domain.webhook_signature import sign

SECRET = "test-webhook-secret"


def succeeded_event(
    payment_id: uuid.UUID | str, provider_payment_id: str, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": "payment.succeeded",
        "data": {"payment_id": str(payment_id), "provider_payment_id": provider_payment_id},
    }


def signed(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    return {"X-Signature": f"t={t},v1={sign(secret, t, body)}", "Content-Type": "application/json"}


def deliver(client, event: dict[str, Any], **sign_options: Any):
    body = json.dumps(event).encode()
    return client.post("/api/v1/webhooks/payments", data=body, headers=signed(body, **sign_options))
