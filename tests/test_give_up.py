"""A paid course no trainer can take is not left hanging: until
ALLOCATION_GIVE_UP_HOURS the student reads "finding_trainer"; then it is refunded at
the provider, through the refund saga, with the reason on the timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from domain import fulfilment
from domain.events import EventType
from models import DeadLetter, DomainEvent, FailureKind, Payment, Purchase
from tasks.beat import give_up_unallocated
from tests.conftest import ADMIN, SANDBOX
from tests.factories import make_course, make_dead_letter, make_payment, make_student

PAID_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_no_trainer_for_48_hours_refunds_at_the_provider_and_says_why(
    db_session, client, eager, clock
):
    clock(PAID_AT)
    student, course = make_student(db_session), make_course(db_session)  # nobody teaches it
    payment = make_payment(db_session, student, course, confirmed=True)
    purchase = fulfilment.create_purchase(db_session, payment.id)
    letter = make_dead_letter(
        db_session,
        step="tutorflow.pipeline.allocate_trainer",
        exception_type="domain.errors.NoTrainerAvailable",
        kind=FailureKind.NO_TRAINER,
        correlation_id=str(payment.id),
    )
    url = f"/api/v1/payments/{payment.id}"
    assert client.get(url, headers=ADMIN).json["fulfilment"]["state"] == "finding_trainer"

    clock(PAID_AT + timedelta(hours=47))
    assert give_up_unallocated.run() == {"refunded": 0}
    refunds_before = SANDBOX.state()["refunds"]

    clock(PAID_AT + timedelta(hours=49))
    assert give_up_unallocated.run() == {"refunded": 1}
    assert SANDBOX.state()["refunds"] == refunds_before + 1
    db_session.expire_all()
    assert db_session.get_one(Payment, payment.id).status == "refunded"
    assert not db_session.get_one(Purchase, purchase.id).is_active  # the compensation ran
    assert db_session.get_one(DeadLetter, letter.id).status == "discarded"
    timeline = [
        e.event_type
        for e in db_session.scalars(
            select(DomainEvent).where(DomainEvent.correlation_id == payment.id)
        )
    ]
    given_up_at = timeline.index(EventType.ALLOCATION_GIVEN_UP)
    assert timeline[given_up_at - 1] == EventType.PAYMENT_REFUNDED
    assert timeline[-1] == EventType.COMPENSATION_DONE
    detail = client.get(url, headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "refunded"
    given_up = [e for e in detail["timeline"] if e["type"] == "ALLOCATION_GIVEN_UP"]
    assert given_up[0]["payload"] == {"reason": "no_trainer_available", "after_hours": 48.0}

    # The next run finds nothing more to do.
    assert give_up_unallocated.run() == {"refunded": 0}
