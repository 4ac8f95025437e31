"""Checkout, confirmation and the payment's fulfilment view."""

from __future__ import annotations

import uuid
from typing import Any

from flask import jsonify
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, fields, validate

from app.auth import ADMIN_SECURITY, require_admin
from app.db import db
from app.schemas import ConfirmIn, InputSchema, PaymentDetailOut, PaymentIn, PaymentOut
from domain import idempotency
from domain.payments import Checkout, start_checkout
from domain.read_models import payment_detail
from tasks.handoff import confirm_and_hand_off, refund_and_compensate

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
    session = db()
    key = idempotency_key
    if key is not None:
        stored = idempotency.claim_key(
            session, key, idempotency.fingerprint(PaymentIn().dump(data))
        )
        if stored is not None:
            session.rollback()
            replay = jsonify(stored.body)
            replay.status_code = stored.status
            return replay
    payment = start_checkout(session, Checkout(**data))
    if key is not None:
        idempotency.store_response(session, key, 201, PaymentOut().dump(payment))
    session.commit()
    return payment


@blp.route("/payments/<uuid:payment_id>/confirm", methods=["POST"])
@blp.arguments(ConfirmIn)
@blp.response(202, PaymentOut)
@blp.alt_response(404, schema="Error")
@blp.alt_response(409, schema="Error")
def confirm_payment(data: dict[str, Any], payment_id: uuid.UUID):
    session = db()
    confirmation = confirm_and_hand_off(
        session, payment_id, data["provider_payment_id"], source="client"
    )
    session.commit()  # the chain is published right after this commit
    return confirmation.payment


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
    session = db()
    refund = refund_and_compensate(session, payment_id, source="admin")
    session.commit()
    return refund.payment
