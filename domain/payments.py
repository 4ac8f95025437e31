"""A payment's life: checkout at the catalogue price, "I paid", the provider's verdict.

Nothing is granted on a client's word. The checkout charges the catalogue's price for the
tier; the student's "I paid" (or the provider's signed webhook) only moves the payment to
`confirming` and starts the chain, whose first step asks the provider; only the provider's
answer — succeeded, for the catalogue amount, currency and this payment's id — makes the
payment `succeeded`, which every later step insists on (fulfilment.lock_live_payment).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import time, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    Select,
    String,
    Table,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from domain.bookings import is_live_hold
from domain.clock import utcnow
from domain.errors import (
    Conflict,
    NotFound,
    PermanentStepError,
    TransientStepError,
    Unprocessable,
)
from domain.events import EventType, record_event
from models import (
    Course,
    CoursePrice,
    DomainEvent,
    FailureKind,
    Hold,
    OutboxKind,
    Payment,
    PaymentStatus,
    Purchase,
    Student,
    WrittenEvent,
    note_events,
    outbox,
    traced,
    write_now,
)

# settings.hold_minutes's default (HOLD_MINUTES), for callers without settings.
DEFAULT_HOLD_MINUTES = 15.0


@dataclass(frozen=True)
class Order:
    """What a student asks to buy; the price is the catalogue's, never the client's."""

    student_id: int
    course_id: int
    tier: int
    time_slot: time
    # What the client believes it costs, if it says: refused (422) when it differs.
    amount_cents: int | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Price:
    amount_cents: int
    currency: str


def quote(session: Session, order: Order) -> Price:
    """The catalogue price of the order, after the checks a checkout needs: the student
    and course exist, the course sells this tier, the student does not hold it yet."""
    if session.get(Student, order.student_id) is None:
        raise NotFound("unknown_student", "No student has this id.", field="student_id")
    course = session.get(Course, order.course_id)
    if course is None:
        raise NotFound("unknown_course", "No course has this id.", field="course_id")
    amount = session.scalar(
        select(CoursePrice.amount_cents).where(
            CoursePrice.course_id == order.course_id, CoursePrice.tier == order.tier
        )
    )
    # Both are the catalogue's current state (PATCH /courses/{id} changes it), not a
    # malformed order: 409, with what the catalogue says now.
    if amount is None:
        raise Conflict(
            "tier_not_sold", "The course is not sold in this tier.", field="tier", tier=order.tier
        )
    price = Price(amount, course.currency)
    if (order.amount_cents is not None and order.amount_cents != price.amount_cents) or (
        order.currency is not None and order.currency != price.currency
    ):
        # DESIGN's contract: a client-sent amount that differs is 422.
        raise Unprocessable(
            "amount_mismatch",
            "The amount or currency differs from the catalogue price.",
            amount_cents=price.amount_cents,
            currency=price.currency,
        )
    if has_active_course(session, order.student_id, order.course_id):
        raise Conflict(
            "course_already_active",
            "The student already has this course active.",
            student_id=order.student_id,
            course_id=order.course_id,
        )
    return price


def start_checkout(
    session: Session,
    order: Order,
    *,
    payment_id: uuid.UUID,
    provider_payment_id: str,
    price: Price,
) -> Payment:
    """The pending payment, tied to the provider's intent, at `price`: the quote the
    intent was created for. The order's checks run again; a catalogue price changed
    since the quote does not reach the payment, which must ask what the provider asks
    (verification compares the two)."""
    # The client's amount, if it gave one, was checked against `price` by that quote.
    quote(session, replace(order, amount_cents=None, currency=None))
    payment = Payment(
        id=payment_id,
        student_id=order.student_id,
        course_id=order.course_id,
        tier=order.tier,
        time_slot=order.time_slot,
        amount_cents=price.amount_cents,
        currency=price.currency,
        status=PaymentStatus.PENDING,
        provider_payment_id=provider_payment_id,
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


def owned_payment(
    session: Session, payment_id: uuid.UUID, student_id: int | None, *, fresh: bool = False
) -> Payment:
    """The payment, if it exists and (for a student) is theirs: another student's
    payment is reported missing, not forbidden, so ids cannot be probed. `fresh`: read
    from the database even if the session holds it already."""
    payment = session.get(Payment, payment_id, populate_existing=fresh)
    if payment is None or (student_id is not None and payment.student_id != student_id):
        raise NotFound("payment_not_found", "No payment has this id.", payment_id=str(payment_id))
    return payment


@dataclass(frozen=True)
class Confirmation:
    payment: Any  # the payment's row (confirming now, or as it already was)
    # True when this call moved it to `confirming` and wrote the outbox row that starts
    # the chain; False when it was under way or done already and nothing changed.
    started: bool


def _confirm_statement() -> Select[Any]:
    """The hot path in one round trip: pending (or, for the provider's own word, failed)
    → confirming, with its event and its outbox row (data-modifying CTEs)."""
    now = bindparam("now", type_=DateTime(timezone=True))
    confirming = (
        update(Payment)
        .where(
            Payment.id == bindparam("confirm_payment_id"),
            Payment.status.in_(bindparam("from_statuses", expanding=True)),
            # IS NOT DISTINCT FROM, not =: no index serves it, so the primary key always
            # finds the row. With "=", PostgreSQL folds the coalesce of the sent student
            # id and may pick ix_payments_student_id instead (the costs tie whenever it
            # guesses one row a student), then reads every payment of the student:
            # thousands for one with many not yet in the statistics (bench/volume.py).
            Payment.student_id.is_not_distinct_from(
                func.coalesce(bindparam("only_student_id"), Payment.student_id)
            ),
        )
        .values(
            status=PaymentStatus.CONFIRMING,
            confirmed_at=now,
            updated_at=now,
            failure_reason=null(),
        )
        .returning(*Payment.__table__.c)
        .cte("confirming")
    )
    event = (
        insert(DomainEvent)
        .from_select(
            ["correlation_id", "student_id", "event_type", "payload"],
            select(
                confirming.c.id,
                confirming.c.student_id,
                literal(EventType.PAYMENT_CONFIRMATION_REQUESTED.value, String),
                bindparam("event_payload", type_=JSONB),
            ),
        )
        .cte("event")
    )
    message = outbox.insert_select(
        select(
            confirming.c.id,
            literal(OutboxKind.START_PIPELINE.value, String),
            func.jsonb_build_object("payment_id", cast(confirming.c.id, String)),
        )
    ).cte("outbox")
    # Paid within the hold: a live hold keeps the trainer's place while the provider's
    # word is awaited (`held_until`: hold_minutes more from now, never less than it had).
    hold = (
        update(Hold)
        .where(Hold.payment_id.in_(select(confirming.c.id)), is_live_hold(now))
        .values(
            expires_at=func.greatest(
                Hold.expires_at, bindparam("held_until", type_=DateTime(timezone=True))
            )
        )
        .cte("hold")
    )
    return (
        select(confirming, *outbox.returned_columns(message.c))
        .select_from(confirming.join(message, true()))
        .add_cte(event)
        .add_cte(hold)
    )


_CONFIRM = _confirm_statement()


def request_confirmation(
    session: Session,
    payment_id: uuid.UUID,
    *,
    student_id: int | None,
    source: str,
    hold_minutes: float = DEFAULT_HOLD_MINUTES,
) -> Confirmation:
    """The student's "I paid" (source "client", their own payment only) or the
    provider's signed `payment_intent.succeeded` (source "webhook", which may also revive
    a payment an earlier card declined). Starts the chain after commit, and a live hold
    keeps its place for `hold_minutes` more (settings.hold_minutes); idempotent:
    repeats, and concurrent calls (they serialize on the payment's row), change nothing.
    """
    from_statuses = [PaymentStatus.PENDING]
    if source == "webhook":
        from_statuses.append(PaymentStatus.FAILED)
    event_payload = traced({"source": source})
    now = utcnow()
    # One round trip: the payment, its event and its outbox row (registered for the
    # after-commit publish by models.outbox).
    rows = outbox.execute(
        session,
        _CONFIRM,
        {
            # Not "payment_id" nor "student_id": an UPDATE (here of holds and payments)
            # takes a parameter named after one of its table's columns as a value to SET.
            "confirm_payment_id": payment_id,
            "from_statuses": from_statuses,
            "only_student_id": student_id,
            "now": now,
            "held_until": now + timedelta(minutes=hold_minutes),
            "event_payload": event_payload,
        },
    )
    row = rows[0] if rows else None
    if row is None:
        # As it is now (read afresh, not as this session may have loaded it before).
        payment = owned_payment(session, payment_id, student_id, fresh=True)
        if payment.status in (PaymentStatus.FAILED, PaymentStatus.REFUNDED):
            raise Conflict(
                "payment_not_confirmable",
                f"A {payment.status} payment cannot be confirmed.",
                payment_id=str(payment_id),
                status=payment.status,
            )
        return Confirmation(payment, False)
    correlation_id = str(row.id)
    note_events(
        session,
        [
            WrittenEvent(
                correlation_id,
                row.student_id,
                EventType.PAYMENT_CONFIRMATION_REQUESTED,
                event_payload,
            )
        ],
    )
    return Confirmation(row, True)


@dataclass(frozen=True)
class ProviderReport:
    """What the provider says of the payment's intent (read by the verify step)."""

    status: str
    amount_cents: int
    currency: str
    metadata_payment_id: str | None
    decline_message: str | None = None


class Verdict(StrEnum):
    VERIFIED = "verified"  # succeeded, for the catalogue price: the chain goes on
    FAILED = "failed"  # declined or canceled: nothing is granted, the chain stops
    NOT_PAID = "not_paid"  # not paid yet: back to pending, the chain stops
    SETTLED = "settled"  # refunded or failed meanwhile: the chain stops


# Intent statuses that may still turn into a payment without the student doing anything.
IN_FLIGHT = frozenset(
    {"processing", "requires_action", "requires_confirmation", "requires_capture"}
)


class NotSettledYet(TransientStepError):
    """The provider is still processing the payment: ask again later."""

    kind = FailureKind.NOT_SETTLED


# The verify step's locking read, built once (bound parameter): as it is now.
_PAYMENT_LOCKED = (
    select(Payment)
    .where(Payment.id == bindparam("payment_id", type_=Payment.id.type))
    .with_for_update()
    .execution_options(populate_existing=True)
)

# The usual verdict in one statement (it locks, checks and writes): a confirming payment
# for exactly the price the provider reports turns succeeded. Anything else (another
# status, a mismatch, no such payment) is decided by verify's locked read. Parameters
# are not named after the table's columns (an UPDATE would SET those).
_PAYMENTS: Table = Payment.__table__  # type: ignore[assignment]
_VERIFIED = (
    update(_PAYMENTS)
    .where(
        _PAYMENTS.c.id == bindparam("verified_payment_id", type_=Payment.id.type),
        _PAYMENTS.c.status == PaymentStatus.CONFIRMING,
        _PAYMENTS.c.amount_cents == bindparam("reported_amount_cents", type_=Integer),
        _PAYMENTS.c.currency == bindparam("reported_currency", type_=String),
    )
    .values(
        status=PaymentStatus.SUCCEEDED,
        updated_at=bindparam("verified_at", type_=DateTime(timezone=True)),
    )
    .returning(_PAYMENTS.c.student_id, _PAYMENTS.c.amount_cents)
)

_INTENT_OF = select(Payment.status, Payment.provider_payment_id).where(
    Payment.id == bindparam("payment_id", type_=Payment.id.type)
)


def intent_to_verify(session: Session, payment_id: uuid.UUID) -> str | None:
    """The provider's id of the payment's intent while the payment waits for the
    provider's word; None once it no longer does (verified already, or settled)."""
    found = session.execute(_INTENT_OF, {"payment_id": payment_id}).one_or_none()
    if found is None:
        raise PermanentStepError(f"payment {payment_id} does not exist")
    if found.status != PaymentStatus.CONFIRMING:
        return None
    if found.provider_payment_id is None:
        raise PermanentStepError(f"payment {payment_id} has no provider payment id")
    return str(found.provider_payment_id)


def verify(session: Session, payment_id: uuid.UUID, report: ProviderReport) -> Verdict:
    """Apply the provider's word to a confirming payment, with its event. A mismatch of
    amount, currency or payment id is a PermanentStepError (dead letter at once): it
    needs a human, and nothing is granted meanwhile."""
    if report.status == "succeeded" and report.metadata_payment_id == str(payment_id):
        verified = session.execute(
            _VERIFIED,
            {
                "verified_payment_id": payment_id,
                "reported_amount_cents": report.amount_cents,
                "reported_currency": report.currency,
                "verified_at": utcnow(),
            },
        ).one_or_none()
        if verified is not None:
            record_event(
                session,
                correlation_id=payment_id,
                student_id=verified.student_id,
                event_type=EventType.PAYMENT_VERIFIED,
                payload={"amount_cents": verified.amount_cents},
            )
            return Verdict.VERIFIED
    payment = session.scalar(_PAYMENT_LOCKED, {"payment_id": payment_id})
    if payment is None:
        raise PermanentStepError(f"payment {payment_id} does not exist")
    if payment.status == PaymentStatus.SUCCEEDED:
        return Verdict.VERIFIED  # verified by an earlier delivery
    if payment.status != PaymentStatus.CONFIRMING:
        return Verdict.SETTLED

    def event(event_type: EventType, **payload: object) -> None:
        record_event(
            session,
            correlation_id=payment.id,
            student_id=payment.student_id,
            event_type=event_type,
            payload=payload,
        )

    if report.status == "succeeded":
        mismatches = {
            name: {"expected": expected, "provider": seen}
            for name, expected, seen in (
                ("amount_cents", payment.amount_cents, report.amount_cents),
                ("currency", payment.currency, report.currency),
                ("payment_id", str(payment.id), report.metadata_payment_id),
            )
            if expected != seen
        }
        if mismatches:
            raise PermanentStepError(
                f"the provider's payment does not match the catalogue: {sorted(mismatches)}"
            )
        write_now(session, payment, status=PaymentStatus.SUCCEEDED, updated_at=utcnow())
        event(EventType.PAYMENT_VERIFIED, amount_cents=payment.amount_cents)
        return Verdict.VERIFIED
    if report.status in IN_FLIGHT:
        raise NotSettledYet(f"the provider reports {report.status}")
    if report.status == "canceled" or report.decline_message:
        reason = report.decline_message or "The payment was canceled."
        write_now(
            session,
            payment,
            status=PaymentStatus.FAILED,
            failure_reason=reason,
            updated_at=utcnow(),
        )
        event(EventType.PAYMENT_FAILED, reason=reason, provider_status=report.status)
        return Verdict.FAILED
    write_now(session, payment, status=PaymentStatus.PENDING, updated_at=utcnow())
    event(EventType.PAYMENT_NOT_YET_PAID, provider_status=report.status)
    return Verdict.NOT_PAID


def verify_again(session: Session, payment_id: uuid.UUID) -> Verdict:
    """For a redelivered verify step that found nothing to ask: the verdict stands."""
    status = session.scalar(select(Payment.status).where(Payment.id == payment_id))
    return Verdict.VERIFIED if status == PaymentStatus.SUCCEEDED else Verdict.SETTLED


def fail(session: Session, payment_id: uuid.UUID, *, reason: str, source: str) -> Payment | None:
    """The provider's `payment_intent.payment_failed`: a pending or confirming payment
    fails, with its event. Anything else is left alone (None)."""
    payment = session.scalar(
        update(Payment)
        .where(
            Payment.id == payment_id,
            Payment.status.in_([PaymentStatus.PENDING, PaymentStatus.CONFIRMING]),
        )
        .values(status=PaymentStatus.FAILED, failure_reason=reason, updated_at=utcnow())
        .returning(Payment)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if payment is not None:
        record_event(
            session,
            correlation_id=payment.id,
            student_id=payment.student_id,
            event_type=EventType.PAYMENT_FAILED,
            payload={"reason": reason, "source": source},
        )
    return payment
