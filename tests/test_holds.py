"""Only what can be delivered is sold (DESIGN invariant 10): a checkout holds a trainer's
place for the tier's whole span or is refused with nothing written; the allocation turns
the hold into the allocation; a payment that outlived its hold is held again, or
refunded at once, never dead-lettered for want of a trainer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from sqlalchemy import func, select

from domain import availability
from harness.processes import celery_worker, provider_worker, wait_until
from models import (
    Allocation,
    DeadLetter,
    DomainEvent,
    Hold,
    HoldStatus,
    Payment,
    PaymentStatus,
    TutoringSession,
)
from tasks.beat import release_expired_holds
from tests.conftest import ADMIN, SANDBOX, open_session, student_auth
from tests.factories import make_course, make_student, make_trainer, pay, payment_body
from tests.test_concurrency import counts, race

# A trainer who works only 17:00-18:30 UTC, every day: one hour-long student fits.
EVENING = {weekday: (time(17, 0), time(18, 30)) for weekday in range(7)}


def checkout(client, student_id: int, course_id: int, **overrides):
    return client.post(
        "/api/v1/payments",
        json=payment_body(student_id, course_id, **overrides),
        headers=student_auth(student_id),
    )


def offered(client, course_id: int, timezone: str = "UTC", tier: int = 10) -> dict[str, int]:
    response = client.get(
        f"/api/v1/courses/{course_id}/availability",
        query_string={"timezone": timezone, "tier": tier},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.json
    return {t["time_slot"]: t["places"] for t in response.json["times"]}


def test_a_checkout_holds_a_place_that_availability_then_counts(client, db_session):
    course = make_course(db_session)
    make_trainer(db_session, [course], timezone="UTC", working_hours=EVENING)
    make_trainer(db_session, [course], timezone="UTC", working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    assert offered(client, course.id) == {"17:00": 2, "17:15": 2, "17:30": 2}

    response = checkout(client, student.id, course.id, time_slot="17:30")
    assert response.status_code == 201, response.json

    hold = db_session.scalars(select(Hold)).one()
    assert (hold.payment_id, hold.status) == (uuid.UUID(response.json["id"]), "held")
    assert (hold.time_slot, hold.timezone, hold.sessions) == (time(17, 30), "UTC", 10)
    # One trainer is held at 17:30: its whole evening is taken (an hour from 17:00 to
    # 17:30 would meet it), the other trainer still has every time.
    assert offered(client, course.id) == {"17:00": 1, "17:15": 1, "17:30": 1}


def test_a_time_nobody_can_serve_is_refused_with_the_nearest_offered_and_nothing_written(
    client, db_session
):
    course = make_course(db_session)
    make_trainer(db_session, [course], timezone="Europe/Berlin", working_hours=EVENING)
    student = make_student(db_session, timezone="Europe/Berlin")
    before = SANDBOX.state()["payment_intents"]

    response = checkout(client, student.id, course.id, time_slot="09:00")

    assert response.status_code == 409
    error = response.json["error"]
    assert error["code"] == "slot_unavailable"
    assert error["details"]["nearest"] == ["17:00", "17:15", "17:30"]
    assert error["details"]["timezone"] == "Europe/Berlin"
    assert counts_in(db_session, Payment, Hold) == [0, 0]
    assert SANDBOX.state()["payment_intents"] == before  # nothing asked


def test_a_course_nobody_teaches_offers_nothing_and_sells_nothing(client, db_session):
    course = make_course(db_session)
    make_trainer(db_session, [course], is_active=False)
    student = make_student(db_session)
    assert offered(client, course.id) == {}
    response = checkout(client, student.id, course.id)
    assert response.status_code == 409
    assert response.json["error"]["details"]["nearest"] == []


def test_an_unreachable_provider_at_checkout_leaves_no_hold(client, db_session):
    course = make_course(db_session)
    make_trainer(db_session, [course], working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    sandbox = SANDBOX
    sandbox.set_mode("error")
    try:
        response = checkout(client, student.id, course.id)
    finally:
        sandbox.set_mode("normal")
    assert response.status_code == 503
    assert counts_in(db_session, Payment, Hold) == [0, 0]
    assert offered(client, course.id)["17:30"] == 1  # the place is free again


def test_an_expired_hold_stops_counting_and_beat_releases_it(client, db_session, clock):
    course = make_course(db_session)
    make_trainer(db_session, [course], working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    start = datetime.now(UTC)
    clock(start)
    assert checkout(client, student.id, course.id).status_code == 201
    assert offered(client, course.id) == {}

    clock(start + timedelta(minutes=16))  # HOLD_MINUTES is 15
    assert offered(client, course.id) == {"17:00": 1, "17:15": 1, "17:30": 1}
    assert release_expired_holds.run() == {"released": 1}
    assert db_session.scalars(select(Hold.status)).one() == HoldStatus.RELEASED
    assert release_expired_holds.run() == {"released": 0}


def test_paying_within_the_hold_keeps_the_place_while_the_provider_is_asked(
    client, db_session, clock
):
    course = make_course(db_session)
    make_trainer(db_session, [course], working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    start = datetime.now(UTC)
    clock(start)
    payment = checkout(client, student.id, course.id).json
    clock(start + timedelta(minutes=14))
    confirmed = client.post(
        f"/api/v1/payments/{payment['id']}/confirm", json={}, headers=student_auth(student.id)
    )
    assert confirmed.status_code == 202
    expires_at = db_session.scalars(select(Hold.expires_at)).one()
    assert expires_at == start + timedelta(minutes=29)


def paid_checkout(client, db_session, student, course) -> str:
    """Checkout, pay at the sandbox; the payment id (still pending here)."""
    response = checkout(client, student.id, course.id)
    assert response.status_code == 201, response.json
    pay(response.json["provider_payment_id"])
    return str(response.json["id"])


def confirm(client, payment_id: str, student_id: int) -> None:
    response = client.post(
        f"/api/v1/payments/{payment_id}/confirm", json={}, headers=student_auth(student_id)
    )
    assert response.status_code == 202, response.json


def test_a_live_hold_becomes_the_allocation_with_its_trainer_without_a_search(
    client, db_session, eager
):
    course = make_course(db_session)
    first, second = make_trainer(db_session, [course]), make_trainer(db_session, [course])
    student = make_student(db_session, timezone="UTC")
    payment_id = paid_checkout(client, db_session, student, course)
    assert db_session.scalars(select(Hold.trainer_id)).one() == first.id  # least loaded
    # A search now would choose the second trainer: the hold keeps the first.
    first.active_students = 5
    db_session.flush()

    confirm(client, payment_id, student.id)

    assert db_session.scalars(select(Allocation.trainer_id)).one() == first.id
    assert db_session.scalars(select(Hold.status)).one() == HoldStatus.CONVERTED
    assert db_session.scalar(select(func.count()).select_from(TutoringSession)) == 7
    assert second.active_students == 0


def test_a_payment_after_its_hold_expired_is_held_again_when_the_time_is_free(
    client, db_session, eager, clock
):
    course = make_course(db_session)
    make_trainer(db_session, [course], working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    start = datetime.now(UTC)
    clock(start)
    payment_id = paid_checkout(client, db_session, student, course)
    clock(start + timedelta(minutes=40))
    release_expired_holds.run()

    confirm(client, payment_id, student.id)

    payment = db_session.get_one(Payment, uuid.UUID(payment_id))
    assert payment.status == PaymentStatus.SUCCEEDED
    assert db_session.scalar(select(func.count()).select_from(Allocation)) == 1
    assert db_session.scalar(select(func.count()).select_from(TutoringSession)) == 7
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 0


def test_a_payment_after_its_hold_expired_is_refunded_at_once_when_the_place_was_taken(
    client, db_session, eager, clock
):
    course = make_course(db_session)
    make_trainer(db_session, [course], working_hours=EVENING)
    late, quick = make_student(db_session, timezone="UTC"), make_student(db_session, timezone="UTC")
    start = datetime.now(UTC)
    clock(start)
    late_payment = paid_checkout(client, db_session, late, course)
    clock(start + timedelta(minutes=20))
    # The hold lapsed: another student takes the only place, pays and is fulfilled.
    confirm(client, paid_checkout(client, db_session, quick, course), quick.id)
    refunds_before = SANDBOX.state()["refunds"]

    confirm(client, late_payment, late.id)

    payment = db_session.get_one(Payment, uuid.UUID(late_payment))
    db_session.refresh(payment)
    assert payment.status == PaymentStatus.REFUNDED
    assert SANDBOX.state()["refunds"] == refunds_before + 1
    timeline = db_session.scalars(
        select(DomainEvent).where(DomainEvent.correlation_id == payment.id).order_by(DomainEvent.id)
    ).all()
    refused = [e for e in timeline if e.event_type == "ALLOCATION_REFUSED"]
    assert [e.payload["reason"] for e in refused] == ["hold_expired"]
    assert "PAYMENT_REFUNDED" in [e.event_type for e in timeline]
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 0
    # The student who got the place keeps it; the late one has nothing scheduled.
    assert db_session.scalar(select(func.count()).select_from(Allocation)) == 1
    detail = client.get(f"/api/v1/payments/{late_payment}", headers=ADMIN).json
    assert detail["status"] == "refunded"


def test_the_held_trainer_deactivated_before_payment_hands_the_student_to_another(
    client, db_session, eager
):
    course = make_course(db_session)
    first = make_trainer(db_session, [course], working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    payment_id = paid_checkout(client, db_session, student, course)
    first.is_active = False
    second = make_trainer(db_session, [course], working_hours=EVENING)
    db_session.flush()

    confirm(client, payment_id, student.id)

    assert db_session.scalars(select(Allocation.trainer_id)).one() == second.id


def test_the_held_trainer_deactivated_with_nobody_else_refunds_at_once(client, db_session, eager):
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course], working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    payment_id = paid_checkout(client, db_session, student, course)
    trainer.is_active = False
    db_session.flush()

    confirm(client, payment_id, student.id)

    assert db_session.get_one(Payment, uuid.UUID(payment_id)).status == PaymentStatus.REFUNDED
    reasons = db_session.scalars(
        select(DomainEvent.payload["reason"].astext).where(
            DomainEvent.event_type == "ALLOCATION_REFUSED"
        )
    ).all()
    assert reasons == ["trainer_unavailable"]
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 0


@pytest.mark.worker
def test_thirty_concurrent_checkouts_for_ten_places_hold_ten_and_fulfil_ten(live_app):
    """Ten trainers, each free for one student at 17:30: thirty students race for the
    time, each in its own thread on the real API; PostgreSQL (the trainers' row locks)
    lets exactly ten through. The ten pay and confirm; a real worker fulfils all ten."""
    with open_session() as session, session.begin():
        course = make_course(session)
        for _ in range(10):
            make_trainer(session, [course], working_hours=EVENING)
        students = [make_student(session, timezone="UTC").id for _ in range(30)]
        course_id = course.id

    def buy(student_id: int):
        return checkout(live_app.test_client(), student_id, course_id)

    answers = race([lambda s=s: buy(s) for s in students])

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * 10 + [409] * 20, statuses
    refused = [a.json["error"]["code"] for a in answers if a.status_code == 409]
    assert set(refused) == {"slot_unavailable"}
    with open_session() as session:
        trainers = session.scalars(select(Hold.trainer_id)).all()
    assert len(trainers) == 10 and len(set(trainers)) == 10  # one place per trainer

    sold = [
        (a.json["id"], a.json["provider_payment_id"], a.json["student_id"])
        for a in answers
        if a.status_code == 201
    ]
    with celery_worker(), provider_worker():
        client = live_app.test_client()
        for payment_id, intent_id, student_id in sold:
            pay(intent_id)
            confirm(client, payment_id, student_id)

        def all_scheduled() -> bool:
            return counts(TutoringSession) == [70]

        wait_until(all_scheduled, 60, "the ten payments never got their sessions")
    assert counts(Allocation, DeadLetter) == [10, 0]
    with open_session() as session:
        assert set(session.scalars(select(Hold.status))) == {HoldStatus.CONVERTED}


def counts_in(session, *models) -> list[int]:
    return [session.scalar(select(func.count()).select_from(m)) for m in models]


def test_nearest_offers_are_the_closest_on_the_clock_across_midnight():
    offers = [availability.Offer(time(h, m), 1) for h, m in ((0, 15), (9, 0), (23, 30), (12, 0))]
    assert availability.nearest(offers, time(23, 55)) == [time(0, 15), time(23, 30), time(9, 0)]
    assert availability.nearest(offers, time(10, 30), 2) == [time(9, 0), time(12, 0)]
