"""Checkout, confirmation and the payment's fulfilment view."""

from __future__ import annotations

import uuid
from typing import Any

from flask import jsonify
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, fields, validate

from actions import payments
from app.auth import ADMIN_SECURITY, require_admin
from app.db import db
from app.runtime import runtime
from app.schemas import ConfirmIn, InputSchema, PaymentDetailOut, PaymentIn, PaymentOut
from domain import idempotency
from domain.payments import Checkout
from domain.read_models import payment_detail

blp = Blueprint("payments", __name__, description="Checkout and payment confirmation.")


class IdempotencyHeader(InputSchema):
    class Meta:
        unknown = EXCLUDE

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Length(1, 255),
        metadata={"description": "Same key and body → the same answer; other body → 422."},
    )


@blp.route("/payments", methods=["POST"])
@blp.arguments(IdempotencyHeader, location="headers", as_kwargs=True)
@blp.arguments(PaymentIn)
@blp.response(201, PaymentOut)
@blp.alt_response(404, schema="Error")
@blp.alt_response(409, schema="Error")
def create_payment(data: dict[str, Any], idempotency_key: str | None = None):
    answer = payments.checkout(
        runtime().database,
        Checkout(**data),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.fingerprint(PaymentIn().dump(data)),
        render=PaymentOut().dump,
    )
    if answer.payment is None:  # the answer stored under the Idempotency-Key
        replay = jsonify(answer.stored_body)
        replay.status_code = answer.status
        return replay
    return answer.payment


@blp.route("/payments/<uuid:payment_id>/confirm", methods=["POST"])
@blp.arguments(ConfirmIn)
@blp.response(202, PaymentOut)
@blp.alt_response(404, schema="Error")
@blp.alt_response(409, schema="Error")
def confirm_payment(data: dict[str, Any], payment_id: uuid.UUID):
    # The chain is published right after the action's commit.
    return payments.confirm(
        runtime().database, payment_id, data["provider_payment_id"], source="client"
    ).payment


@blp.route("/payments/<uuid:payment_id>", methods=["GET"])
@blp.response(200, PaymentDetailOut)
@blp.alt_response(404, schema="Error")
def get_payment(payment_id: uuid.UUID):
    return payment_detail(db(), payment_id)


@blp.route("/payments/<uuid:payment_id>/refund", methods=["POST"])
@blp.doc(security=ADMIN_SECURITY)
@blp.response(202, PaymentOut)
@blp.alt_response(401, schema="Error")
@blp.alt_response(404, schema="Error")
@blp.alt_response(409, schema="Error")
@require_admin
def refund_payment(payment_id: uuid.UUID):
    """Refund (admin): the compensation undoes purchase, allocation and future sessions."""
    return payments.refund(runtime().database, payment_id, source="admin").payment
