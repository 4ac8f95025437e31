"""Checkout at the catalogue price, idempotency keys, "I paid" and the provider's word,
and the payment's fulfilment view."""

import uuid
from dataclasses import replace

import pytest
from sqlalchemy import delete, func, select

from domain import payments
from domain.errors import PermanentStepError
from domain.payments import ProviderReport, Verdict, request_confirmation
from models import (
    CoursePrice,
    DeadLetter,
    DomainEvent,
    OutboxKind,
    OutboxMessage,
    Payment,
    Purchase,
)
from tasks.pipeline import verify_payment
from tests.conftest import ADMIN, student_auth
from tests.factories import (
    make_payment,
    make_sellable_course,
    make_student,
    make_trainer,
    pay,
    payment_body,
    provider,
)


def checkout(client, student, course, **overrides):
    return client.post(
        "/api/v1/payments",
        json=payment_body(student.id, course.id, **overrides),
        headers=student_auth(student.id),
    )


def test_checkout_charges_the_catalogue_price_and_creates_the_intent(client, db_session):
    student, course = make_student(db_session), make_sellable_course(db_session)
    response = checkout(client, student, course, tier=20)
    assert response.status_code == 201, response.json
    body = response.json
    assert (body["status"], body["amount_cents"], body["currency"]) == ("pending", 18900, "EUR")
    assert body["client_secret"].startswith(body["provider_payment_id"] + "_secret_")
    intent = provider().retrieve_intent(body["provider_payment_id"])
    assert (intent.amount, intent.currency) == (18900, "EUR")
    assert intent.metadata["payment_id"] == body["id"]
    assert db_session.get(Payment, uuid.UUID(body["id"])).amount_cents == 18900


def test_a_client_sent_amount_that_differs_is_refused_and_writes_nothing(client, db_session):
    student, course = make_student(db_session), make_sellable_course(db_session)
    response = checkout(client, student, course, amount_cents=100, currency="EUR")
    # DESIGN's contract: a client-sent amount that differs is 422, with the price.
    assert response.status_code == 422
    assert response.json["error"]["code"] == "amount_mismatch"
    assert response.json["error"]["details"]["amount_cents"] == 9900
    assert checkout(client, student, course, currency="USD").status_code == 422
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 0
    agreeing = checkout(client, student, course, amount_cents=9900, currency="EUR")
    assert agreeing.status_code == 201


def test_a_tier_the_course_does_not_sell_is_a_conflict_with_the_catalogue(client, db_session):
    student, course = make_student(db_session), make_sellable_course(db_session)
    db_session.execute(delete(CoursePrice).where(CoursePrice.course_id == course.id))
    db_session.flush()
    response = checkout(client, student, course, tier=30)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "tier_not_sold"
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 0


def test_an_operator_checks_out_only_for_a_named_student(client, db_session):
    student, course = make_student(db_session), make_sellable_course(db_session, trainers=2)
    body = payment_body(student.id, course.id)
    del body["student_id"]
    # The body a student's token buys with; an operator has no student of its own.
    response = client.post("/api/v1/payments", json=body, headers=ADMIN)
    assert response.status_code == 403
    assert response.json["error"]["code"] == "student_required"
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 0
    own = client.post("/api/v1/payments", json=body, headers=student_auth(student.id))
    assert own.status_code == 201
    other = make_student(db_session)
    named = client.post("/api/v1/payments", json={**body, "student_id": other.id}, headers=ADMIN)
    assert named.status_code == 201, named.json


def test_same_idempotency_key_and_body_answer_the_same(client, db_session):
    student, course = make_student(db_session), make_sellable_course(db_session)
    headers = {"Idempotency-Key": "checkout-1", **student_auth(student.id)}
    body = payment_body(student.id, course.id)
    first = client.post("/api/v1/payments", json=body, headers=headers)
    again = client.post("/api/v1/payments", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json == again.json
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 1


def test_same_idempotency_key_with_another_body_is_refused(client, db_session):
    student, course = make_student(db_session), make_sellable_course(db_session)
    headers = {"Idempotency-Key": "checkout-1", **student_auth(student.id)}
    client.post("/api/v1/payments", json=payment_body(student.id, course.id), headers=headers)
    other = client.post(
        "/api/v1/payments", json=payment_body(student.id, course.id, tier=20), headers=headers
    )
    assert other.status_code == 409  # the key is bound to the first body
    assert other.json["error"]["code"] == "idempotency_key_reused"
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 1


def test_an_idempotency_key_is_the_students_own(client, db_session):
    course = make_sellable_course(db_session, trainers=2)  # both at 17:30
    alice, bob = make_student(db_session), make_student(db_session)
    for student in (alice, bob):
        response = client.post(
            "/api/v1/payments",
            json=payment_body(student.id, course.id),
            headers={"Idempotency-Key": "same-key", **student_auth(student.id)},
        )
        assert response.status_code == 201
        assert response.json["student_id"] == student.id
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 2


def test_checkout_for_another_student_is_forbidden(client, db_session):
    alice, bob, course = (
        make_student(db_session),
        make_student(db_session),
        make_sellable_course(db_session),
    )
    response = client.post(
        "/api/v1/payments",
        json=payment_body(bob.id, course.id),
        headers=student_auth(alice.id),
    )
    assert response.status_code == 403
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 0


def test_checkout_of_an_active_course_is_a_conflict(client, db_session, eager):
    student, course = make_student(db_session), make_sellable_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, paid=True)
    confirm = client.post(
        f"/api/v1/payments/{payment.id}/confirm", json={}, headers=student_auth(student.id)
    )
    assert confirm.status_code == 202
    response = checkout(client, student, course)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "course_already_active"


def test_confirm_answers_202_and_the_chain_asks_the_provider(client, db_session, eager):
    student, course = make_student(db_session), make_sellable_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, paid=True)

    response = client.post(
        f"/api/v1/payments/{payment.id}/confirm", json={}, headers=student_auth(student.id)
    )
    assert response.status_code == 202
    assert response.json["status"] == "confirming"

    detail = client.get(f"/api/v1/payments/{payment.id}", headers=student_auth(student.id)).json
    assert detail["status"] == "succeeded"
    assert detail["fulfilment"]["state"] == "scheduled"
    assert detail["fulfilment"]["sessions_scheduled"] == 7
    assert detail["fulfilment"]["allocation"]["trainer"]["name"].startswith("Trainer")
    assert [e["type"] for e in detail["timeline"]] == [
        "PAYMENT_CONFIRMATION_REQUESTED",
        "PAYMENT_VERIFIED",
        "PURCHASE_CREATED",
        "TRAINER_ALLOCATED",
        "SESSIONS_GENERATED",
    ]
    outbox = db_session.scalars(
        select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.START_PIPELINE)
    ).one()
    assert outbox.published_at is not None


def test_i_paid_without_paying_grants_nothing(client, db_session, eager):
    student, course = make_student(db_session), make_sellable_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, paid=False)  # never paid
    auth = student_auth(student.id)
    assert (
        client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=auth).status_code
        == 202
    )
    detail = client.get(f"/api/v1/payments/{payment.id}", headers=auth).json
    assert detail["status"] == "pending"
    assert detail["timeline"][-1]["type"] == "PAYMENT_NOT_YET_PAID"
    assert db_session.scalar(select(func.count()).select_from(Purchase)) == 0

    pay(payment.provider_payment_id)  # now the student pays, and says so again
    assert (
        client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=auth).status_code
        == 202
    )
    detail = client.get(f"/api/v1/payments/{payment.id}", headers=auth).json
    assert (detail["status"], detail["fulfilment"]["sessions_scheduled"]) == ("succeeded", 7)


def test_a_declined_card_fails_the_payment_and_grants_nothing(client, db_session, eager):
    student, course = make_student(db_session), make_sellable_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, paid=False)
    pay(payment.provider_payment_id, "pm_card_chargeDeclined")
    auth = student_auth(student.id)
    assert (
        client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=auth).status_code
        == 202
    )
    detail = client.get(f"/api/v1/payments/{payment.id}", headers=auth).json
    assert detail["status"] == "failed"
    assert detail["failure_reason"] == "Your card was declined."
    assert detail["timeline"][-1]["type"] == "PAYMENT_FAILED"
    assert db_session.scalar(select(func.count()).select_from(Purchase)) == 0
    again = client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=auth)
    assert again.status_code == 409


def test_confirming_again_answers_the_same_and_publishes_nothing_new(client, db_session, eager):
    student, course = make_student(db_session), make_sellable_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, paid=True)
    url, auth = f"/api/v1/payments/{payment.id}/confirm", student_auth(student.id)
    first = client.post(url, json={}, headers=auth)
    again = client.post(url, json={}, headers=auth)
    assert first.status_code == again.status_code == 202
    assert again.json["status"] == "succeeded"
    assert (
        db_session.scalar(
            select(func.count()).where(OutboxMessage.kind == OutboxKind.START_PIPELINE)
        )
        == 1
    )
    assert db_session.scalar(select(func.count()).select_from(Purchase)) == 1


def test_another_students_payment_is_404_for_every_payment_endpoint(client, db_session):
    alice, bob, course = (
        make_student(db_session),
        make_student(db_session),
        make_sellable_course(db_session),
    )
    payment = make_payment(db_session, alice, course, paid=True)
    mallory = student_auth(bob.id)
    for response in (
        client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=mallory),
        client.get(f"/api/v1/payments/{payment.id}", headers=mallory),
    ):
        assert response.status_code == 404
        assert response.json["error"]["code"] == "payment_not_found"
    assert db_session.get(Payment, payment.id).status == "pending"
    assert client.get(f"/api/v1/payments/{payment.id}", headers=ADMIN).status_code == 200


def test_no_or_a_bad_token_is_401_for_every_payment_endpoint(client, db_session):
    student, course = make_student(db_session), make_sellable_course(db_session)
    payment = make_payment(db_session, student, course)
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic x"}):
        for response in (
            client.post("/api/v1/payments", json=payment_body(student.id, course.id)),
            client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=headers),
            client.get(f"/api/v1/payments/{payment.id}", headers=headers),
            client.post(f"/api/v1/payments/{payment.id}/refund", headers=headers),
        ):
            assert response.status_code == 401, response.json
            assert response.json["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_payment_is_404(client, db_connection):
    unknown = uuid.uuid4()
    confirm = client.post(f"/api/v1/payments/{unknown}/confirm", json={}, headers=ADMIN)
    assert confirm.status_code == 404
    assert confirm.json["error"]["code"] == "payment_not_found"
    assert client.get(f"/api/v1/payments/{unknown}", headers=ADMIN).status_code == 404
    assert client.get("/api/v1/payments/not-a-uuid", headers=ADMIN).status_code == 404


def test_a_provider_amount_that_differs_from_the_catalogue_is_dead_lettered_at_once(
    client, db_session, eager
):
    """An intent paid for less than the catalogue price (say it was swapped for a
    cheaper one): verification refuses it at once, with the reason, and grants nothing."""
    student, course = make_student(db_session), make_sellable_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course, paid=False)
    cheap = provider().client.v1.payment_intents.create(
        params={"amount": 100, "currency": "eur", "metadata": {"payment_id": str(payment.id)}}
    )
    pay(cheap.id)
    payment.provider_payment_id = cheap.id
    db_session.flush()
    request_confirmation(db_session, payment.id, student_id=None, source="test")
    db_session.flush()
    result = verify_payment.apply(
        args=(str(payment.id),), kwargs={"correlation_id": str(payment.id)}, throw=False
    )
    assert result.failed()
    letter = db_session.scalars(select(DeadLetter)).one()
    assert letter.task_name == "tutorflow.pipeline.verify_payment"
    assert (letter.retries, letter.exception_type) == (0, "domain.errors.PermanentStepError")
    assert "amount_cents" in letter.exception_message
    db_session.expire_all()
    assert db_session.get(Payment, payment.id).status == "confirming"
    assert db_session.scalar(select(func.count()).select_from(Purchase)) == 0


@pytest.mark.parametrize(
    ("field", "reported", "named"),
    [
        ("amount_cents", 100, "amount_cents"),
        ("currency", "usd", "currency"),
        ("metadata_payment_id", "00000000-0000-4000-8000-000000000000", "payment_id"),
        ("metadata_payment_id", None, "payment_id"),
    ],
)
def test_verify_grants_only_the_exact_price_for_this_payment_and_only_once(
    db_session, field, reported, named
):
    """The provider's word turns a confirming payment succeeded only when its amount,
    currency and payment id are the payment's; anything else names what differs and
    changes nothing. A second verdict (a redelivery) grants nothing twice."""
    student, course = make_student(db_session), make_sellable_course(db_session)
    payment = make_payment(db_session, student, course)
    request_confirmation(db_session, payment.id, student_id=None, source="test")
    exact = ProviderReport("succeeded", payment.amount_cents, payment.currency, str(payment.id))

    with pytest.raises(PermanentStepError, match=named):
        payments.verify(db_session, payment.id, replace(exact, **{field: reported}))
    db_session.expire_all()
    assert db_session.get_one(Payment, payment.id).status == "confirming"

    assert payments.verify(db_session, payment.id, exact) == Verdict.VERIFIED
    assert payments.verify(db_session, payment.id, exact) == Verdict.VERIFIED
    db_session.expire_all()
    assert db_session.get_one(Payment, payment.id).status == "succeeded"
    verified = select(func.count()).where(
        DomainEvent.correlation_id == payment.id, DomainEvent.event_type == "PAYMENT_VERIFIED"
    )
    assert db_session.scalar(verified) == 1
