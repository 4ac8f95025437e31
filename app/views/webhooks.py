"""The payment provider's webhook, in Stripe's own format, checked by its library."""

from __future__ import annotations

import stripe
from flask import request
from flask_smorest import Blueprint

from actions import webhooks
from app.errors import ApiError
from app.runtime import runtime
from app.schemas import ErrorOut, WebhookOut

blp = Blueprint("webhooks", __name__, description="Payment provider webhooks.")


@blp.route("/webhooks/stripe", methods=["POST"])
@blp.doc(
    parameters=[
        {
            "in": "header",
            "name": "Stripe-Signature",
            "required": True,
            "schema": {"type": "string", "maxLength": 4096},
            "description": "Stripe's signature (t=…,v1=…), 300 s tolerance; several "
            "secrets are accepted while rotating.",
        }
    ],
    requestBody={
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "A Stripe event: payment_intent.succeeded, "
        "payment_intent.payment_failed and charge.refunded are acted on; other types "
        "are acknowledged and ignored.",
    },
)
@blp.response(200, WebhookOut)
@blp.alt_response(400, schema=ErrorOut, description="Bad payload or signature.")
@blp.alt_response(409, schema=ErrorOut)
def receive_stripe_event():
    raw = request.get_data(cache=True)
    provider = runtime().provider
    try:
        event = provider.verified_event(raw, request.headers.get("Stripe-Signature"))
    except stripe.SignatureVerificationError as exc:
        raise ApiError(400, "invalid_signature", "The Stripe-Signature does not verify.") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # not JSON, or not an event
        raise ApiError(400, "bad_request", "The payload is not a Stripe event.") from exc
    app = runtime()
    outcome = webhooks.receive(
        app.database,
        event_id=event["id"],
        event_type=event["type"],
        obj=event["data"]["object"],
        hold_minutes=app.settings.hold_minutes,
    )
    return {
        "received": True,
        "duplicate": outcome.duplicate,
        "handled": outcome.handled,
        "payment_id": outcome.payment_id,
        "status": outcome.status,
    }
