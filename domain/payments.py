"""Checkout and confirmation: the API's writes, one transaction each."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import time
from typing import Any

from sqlalchemy import (
    DateTime,
    Select,
    String,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.errors import Conflict, NotFound, Unprocessable
from domain.events import EventType
from models import (
    Course,
    DomainEvent,
    OutboxKind,
    OutboxMessage,
    Payment,
    PaymentStatus,
    Purchase,
    Student,
    WrittenEvent,
    WrittenOutbox,
    note_events,
    note_outbox,
)


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
class Confirmation:
    payment: Any  # the confirmed payment's row, or the Payment already confirmed
    # True when this call confirmed the payment (and wrote the outbox row that starts
    # the chain); False when it was confirmed already and nothing changed.
    started: bool


def _confirm_statement() -> Select[Any]:
    """The hot path in one round trip: flip the payment, write its event and its outbox
    row (data-modifying CTEs), return the payment and the outbox id."""
    now = bindparam("now", type_=DateTime(timezone=True))
    confirmed = (
        update(Payment)
        .where(Payment.id == bindparam("payment_id"), Payment.status == PaymentStatus.PENDING)
        .values(
            status=PaymentStatus.SUCCEEDED,
            provider_payment_id=bindparam("provider_payment_id"),
            confirmed_at=now,
            updated_at=now,
        )
        .returning(*Payment.__table__.c)
        .cte("confirmed")
    )
    event = (
        insert(DomainEvent)
        .from_select(
            ["correlation_id", "student_id", "event_type", "payload"],
            select(
                confirmed.c.id,
                confirmed.c.student_id,
                literal(EventType.PURCHASE_CONFIRMED.value, String),
                bindparam("event_payload", type_=JSONB),
            ),
        )
        .cte("event")
    )
    outbox = (
        insert(OutboxMessage)
        .from_select(
            ["correlation_id", "kind", "payload"],
            select(
                confirmed.c.id,
                literal(OutboxKind.START_PIPELINE.value, String),
                func.jsonb_build_object("payment_id", cast(confirmed.c.id, String)),
            ),
        )
        .returning(OutboxMessage.id)
        .cte("outbox")
    )
    return (
        select(confirmed, outbox.c.id.label("outbox_id"))
        .select_from(confirmed.join(outbox, true()))
        .add_cte(event)
    )


_CONFIRM = _confirm_statement()


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
                "event_payload": event_payload,
            },
        ).one_or_none()
    except IntegrityError as exc:  # the caller's transaction is rolled back with it
        raise Conflict(
            "provider_payment_id_in_use",
            "This provider payment id already confirmed another payment.",
            provider_payment_id=provider_payment_id,
        ) from exc
    if row is None:
        return Confirmation(_already_confirmed(session, payment_id, provider_payment_id), False)
    correlation_id = str(row.id)
    note_events(
        session,
        [WrittenEvent(correlation_id, row.student_id, EventType.PURCHASE_CONFIRMED, event_payload)],
    )
    note_outbox(
        session,
        [
            WrittenOutbox(
                row.outbox_id,
                correlation_id,
                OutboxKind.START_PIPELINE,
                {"payment_id": correlation_id},
            )
        ],
    )
    return Confirmation(row, True)


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
