"""Checkout and confirmation: the API's writes, one transaction each."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import time
from typing import Any

from sqlalchemy import exists, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.errors import Conflict, NotFound, Unprocessable
from domain.events import EventType, announce_after_commit
from models import Course, Payment, PaymentStatus, Purchase, Student

START_PIPELINE = "start_pipeline"


@dataclass(frozen=True)
class Checkout:
    student_id: int
    course_id: int
    tier: int
    time_slot: time
    amount_cents: int
    currency: str


def start_checkout(session: Session, checkout: Checkout) -> Payment:
    if session.get(Student, checkout.student_id) is None:
        raise Unprocessable("unknown_student", "No student has this id.", field="student_id")
    if session.get(Course, checkout.course_id) is None:
        raise Unprocessable("unknown_course", "No course has this id.", field="course_id")
    if has_active_course(session, checkout.student_id, checkout.course_id):
        raise Conflict(
            "course_already_active",
            "The student already has this course active.",
            student_id=checkout.student_id,
            course_id=checkout.course_id,
        )
    payment = Payment(
        student_id=checkout.student_id,
        course_id=checkout.course_id,
        tier=checkout.tier,
        time_slot=checkout.time_slot,
        amount_cents=checkout.amount_cents,
        currency=checkout.currency,
        status=PaymentStatus.PENDING,
    )
    session.add(payment)
    session.flush()
    return payment


def has_active_course(session: Session, student_id: int, course_id: int) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    Purchase.student_id == student_id,
                    Purchase.course_id == course_id,
                    Purchase.is_active,
                )
            )
        )
    )


@dataclass(frozen=True)
class Handoff:
    """An outbox row written in the caller's transaction, to publish after its commit."""

    id: int
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Confirmation:
    payment: Any  # the confirmed payment's row, or the Payment already confirmed
    # The hand-off to publish after commit; None when this call confirmed nothing new.
    outbox: Handoff | None


# The hot path in one round trip: flip the payment, write its event and its outbox row.
_CONFIRM = text(
    """
    WITH confirmed AS (
        UPDATE payments
        SET status = 'succeeded', provider_payment_id = :provider_payment_id,
            confirmed_at = :now, updated_at = :now
        WHERE id = :payment_id AND status = 'pending'
        RETURNING *
    ), event AS (
        INSERT INTO domain_events (correlation_id, student_id, event_type, payload)
        SELECT id, student_id, 'PURCHASE_CONFIRMED', CAST(:event_payload AS jsonb)
        FROM confirmed
    ), outbox AS (
        INSERT INTO outbox (correlation_id, kind, payload)
        SELECT id, :kind, jsonb_build_object('payment_id', id::text) FROM confirmed
        RETURNING id
    )
    SELECT confirmed.*, outbox.id AS outbox_id FROM confirmed CROSS JOIN outbox
    """
)


def confirm_payment(
    session: Session, payment_id: uuid.UUID, provider_payment_id: str, *, source: str
) -> Confirmation:
    """pending → succeeded, with its event and outbox row, in the caller's transaction.

    Idempotent: confirming again with the same provider id changes nothing and
    answers the same; concurrent confirmations serialize on the payment's row.
    """
    event_payload = {"source": source, "provider_payment_id": provider_payment_id}
    try:
        row = session.execute(
            _CONFIRM,
            {
                "payment_id": payment_id,
                "provider_payment_id": provider_payment_id,
                "now": utcnow(),
                "event_payload": json.dumps(event_payload),
                "kind": START_PIPELINE,
            },
        ).one_or_none()
    except IntegrityError as exc:  # the caller's transaction is rolled back with it
        raise Conflict(
            "provider_payment_id_in_use",
            "This provider payment id already confirmed another payment.",
            provider_payment_id=provider_payment_id,
        ) from exc
    if row is None:
        return Confirmation(_already_confirmed(session, payment_id, provider_payment_id), None)
    announce_after_commit(
        session, row.id, row.student_id, EventType.PURCHASE_CONFIRMED, event_payload
    )
    return Confirmation(row, Handoff(row.outbox_id, START_PIPELINE, {"payment_id": str(row.id)}))


def _already_confirmed(
    session: Session, payment_id: uuid.UUID, provider_payment_id: str
) -> Payment:
    payment = session.get(Payment, payment_id, populate_existing=True)
    if payment is None:
        raise NotFound("payment_not_found", "No payment has this id.", payment_id=str(payment_id))
    if payment.status == PaymentStatus.SUCCEEDED:
        if payment.provider_payment_id == provider_payment_id:
            return payment
        raise Conflict(
            "already_confirmed",
            "The payment was confirmed with another provider payment id.",
            payment_id=str(payment_id),
        )
    raise Conflict(
        "payment_not_confirmable",
        f"A {payment.status} payment cannot be confirmed.",
        payment_id=str(payment_id),
        status=payment.status,
    )
