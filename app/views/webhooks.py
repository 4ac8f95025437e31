"""The payment provider's signed webhook."""

from __future__ import annotations

import json
import time

from flask import request
from flask_smorest import Blueprint
from marshmallow import ValidationError

from actions import webhooks
from app.errors import ApiError
from app.runtime import runtime
from app.schemas import WebhookIn, WebhookOut
from domain.webhook_signature import BadSignatureHeader, InvalidSignature, verify_signature

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
    secrets = runtime().settings.webhook_secret.split(",")
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
    outcome = webhooks.receive(
        runtime().database, event_id=event["id"], event_type=event["type"], data=event["data"]
    )
    return {
        "received": True,
        "duplicate": outcome.duplicate,
        "payment_id": outcome.payment_id,
        "status": outcome.status,
    }
