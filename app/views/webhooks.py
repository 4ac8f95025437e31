"""The payment provider's signed webhook."""

from __future__ import annotations

import json
import time

from flask import current_app, request
from flask_smorest import Blueprint
from marshmallow import ValidationError
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.db import db
from app.errors import ApiError
from app.schemas import WebhookIn, WebhookOut
from domain.webhook_signature import BadSignatureHeader, InvalidSignature, verify_signature
from models import WebhookEvent
from tasks.handoff import confirm_and_hand_off, refund_and_compensate

blp = Blueprint("webhooks", __name__, description="Payment provider webhooks.")


@blp.route("/webhooks/payments", methods=["POST"])
@blp.doc(
    parameters=[
        {
            "in": "header",
            "name": "X-Signature",
            "required": True,
            "schema": {"type": "string"},
            "description": 't=<unix>,v1=<hex HMAC-SHA256 of "t.body">; 300 s tolerance',
        }
    ],
    requestBody={"content": {"application/json": {"schema": WebhookIn}}},
)
@blp.response(200, WebhookOut)
@blp.alt_response(400, schema="Error")
@blp.alt_response(401, schema="Error")
@blp.alt_response(404, schema="Error")
@blp.alt_response(409, schema="Error")
def receive_payment_event():
    raw = request.get_data(cache=True)
    secrets = current_app.config["WEBHOOK_SECRET"].split(",")
    try:
        verify_signature(request.headers.get("X-Signature"), raw, secrets=secrets, now=time.time())
    except BadSignatureHeader as exc:
        raise ApiError(400, "bad_signature_header", str(exc)) from exc
    except InvalidSignature as exc:
        raise ApiError(401, "invalid_signature", str(exc)) from exc
    try:
        event = WebhookIn().load(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "bad_request", "The request body is not valid JSON.") from exc
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "The event does not validate.", json=exc.messages
        ) from exc
    session = db()
    # Recorded in the same transaction as its effect: a failure leaves the id free
    # for the provider's next delivery; a success makes every redelivery a no-op.
    first_delivery = session.scalar(
        pg_insert(WebhookEvent)
        .values(id=event["id"], type=event["type"], payment_id=event["data"]["payment_id"])
        .on_conflict_do_nothing()
        .returning(WebhookEvent.id)
    )
    if first_delivery is None:
        session.rollback()
        return {"received": True, "duplicate": True, "payment_id": event["data"]["payment_id"]}
    data = event["data"]
    if event["type"] == "payment.succeeded":
        payment = confirm_and_hand_off(
            session, data["payment_id"], data["provider_payment_id"], source="webhook"
        ).payment
    else:  # payment.refunded
        payment = refund_and_compensate(
            session, data["payment_id"], source="webhook",
            provider_payment_id=data["provider_payment_id"],
        ).payment  # fmt: skip
    session.commit()
    return {"received": True, "duplicate": False, "payment_id": payment.id,
            "status": payment.status}  # fmt: skip
