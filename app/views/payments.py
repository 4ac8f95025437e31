"""Checkout, confirmation and the payment's fulfilment view."""

from __future__ import annotations

import uuid
from typing import Any

from flask import jsonify
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, fields, validate

from actions import payments
from app.auth import ADMIN_SECURITY, STUDENT_SECURITY, admin_only, caller, student_or_admin
from app.db import db
from app.errors import ApiError
from app.runtime import runtime
from app.schemas import (
    CheckoutOut,
    ConfirmIn,
    ErrorOut,
    InputSchema,
    PaymentDetailOut,
    PaymentIn,
    PaymentOut,
)
from domain import idempotency
from domain.payments import Order
from domain.read_models import payment_detail

blp = Blueprint("payments", __name__, description="Checkout and payment confirmation.")


class IdempotencyHeader(InputSchema):
    class Meta:
        unknown = EXCLUDE

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Length(1, 255),
        metadata={"description": "Same key and body → the same answer; other body → 409."},
    )


@blp.route("/payments", methods=["POST"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.arguments(IdempotencyHeader, location="headers", as_kwargs=True)
@blp.arguments(PaymentIn)
@blp.response(201, CheckoutOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(
    403,
    schema=ErrorOut,
    description="Another student's `student_id`; or an operator's token without one "
    "(`student_required`).",
)
@blp.alt_response(
    409,
    schema=ErrorOut,
    description="The catalogue or the student's state refuses the order: "
    "`slot_unavailable` (no trainer can serve the time for the tier's whole span; "
    "`details.nearest`), `tier_not_sold`, `course_already_active`, "
    "`idempotency_key_reused` (the `Idempotency-Key` was used with another body).",
)
@blp.alt_response(
    422,
    schema=ErrorOut,
    description="The body does not validate, or `amount_mismatch`: the `amount_cents`/"
    "`currency` sent differ from the catalogue's price (`details` has it).",
)
@blp.alt_response(503, schema=ErrorOut, description="The payment provider is unreachable.")
def create_payment(data: dict[str, Any], idempotency_key: str | None = None):
    """Start a checkout at the catalogue price; the answer carries the PaymentIntent's
    client secret for the provider's SDK."""
    who = caller()
    student_id = data.get("student_id", who.student_id)
    if student_id is None:
        # The same body from a student's token buys for that student: what is refused
        # here is the caller (an operator has no student of its own), so 403, not 422.
        raise ApiError(
            403, "student_required", "An operator checks out for a student: name the student_id."
        )
    who.require_student(student_id)
    app = runtime()
    answer = payments.checkout(
        app.database,
        app.provider,
        Order(
            student_id=student_id,
            course_id=data["course_id"],
            tier=data["tier"],
            time_slot=data["time_slot"],
            amount_cents=data.get("amount_cents"),
            currency=data.get("currency"),
        ),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.fingerprint({**PaymentIn().dump(data), "student_id": student_id}),
        render=lambda payment, secret, held_until: {
            **PaymentOut().dump(payment),
            "client_secret": secret,
            "hold_expires_at": held_until.isoformat(),
        },
        hold_minutes=app.settings.hold_minutes,
    )
    response = jsonify(answer.body)
    response.status_code = answer.status
    return response


@blp.route("/payments/<uuid:payment_id>/confirm", methods=["POST"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.arguments(ConfirmIn)
@blp.response(202, PaymentOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
def confirm_payment(data: dict[str, Any], payment_id: uuid.UUID):
    """The student says they paid: the payment goes to `confirming` and the chain starts
    by asking the provider. Another student's payment is a 404."""
    app = runtime()
    return payments.confirm(
        app.database,
        payment_id,
        student_id=caller().student_id,
        source="client",
        hold_minutes=app.settings.hold_minutes,
    ).payment


@blp.route("/payments/<uuid:payment_id>", methods=["GET"])
@student_or_admin
@blp.doc(security=STUDENT_SECURITY)
@blp.response(200, PaymentDetailOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
def get_payment(payment_id: uuid.UUID):
    return payment_detail(db(), payment_id, student_id=caller().student_id)


@blp.route("/payments/<uuid:payment_id>/refund", methods=["POST"])
@admin_only
@blp.doc(security=ADMIN_SECURITY)
@blp.response(202, PaymentOut)
@blp.alt_response(401, schema=ErrorOut)
@blp.alt_response(404, schema=ErrorOut)
@blp.alt_response(409, schema=ErrorOut)
@blp.alt_response(503, schema=ErrorOut, description="The payment provider is unreachable.")
def refund_payment(payment_id: uuid.UUID):
    """Refund (admin) at the provider, then compensate: purchase, allocation and future
    sessions are undone after the commit."""
    app = runtime()
    return payments.refund(app.database, app.provider, payment_id).payment
