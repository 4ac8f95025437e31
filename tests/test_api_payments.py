"""Checkout, idempotency keys, confirmation, and the payment's fulfilment view."""

import uuid

from sqlalchemy import func, select

from models import OutboxMessage, Payment, Purchase
from tests.factories import make_course, make_payment, make_student, make_trainer, payment_body


def test_checkout_creates_a_pending_payment(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    response = client.post("/api/v1/payments", json=payment_body(student.id, course.id))
    assert response.status_code == 201
    assert response.json["status"] == "pending"
    assert response.json["time_slot"] == "17:30"
    assert db_session.get(Payment, uuid.UUID(response.json["id"])) is not None


def test_same_idempotency_key_and_body_answer_the_same(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    headers = {"Idempotency-Key": "checkout-1"}
    first = client.post(
        "/api/v1/payments", json=payment_body(student.id, course.id), headers=headers
    )
    again = client.post(
        "/api/v1/payments", json=payment_body(student.id, course.id), headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert first.json == again.json
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 1


def test_same_idempotency_key_with_another_body_is_refused(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    headers = {"Idempotency-Key": "checkout-1"}
    client.post("/api/v1/payments", json=payment_body(student.id, course.id), headers=headers)
    other = client.post(
        "/api/v1/payments", json=payment_body(student.id, course.id, tier=20), headers=headers
    )
    assert other.status_code == 422
    assert other.json["error"]["code"] == "idempotency_key_reused"
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 1


def test_checkout_of_an_active_course_is_a_conflict(client, db_session, eager):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course)
    client.post(f"/api/v1/payments/{payment.id}/confirm", json={"provider_payment_id": "pp_1"})
    response = client.post("/api/v1/payments", json=payment_body(student.id, course.id))
    assert response.status_code == 409
    assert response.json["error"]["code"] == "course_already_active"


def test_confirm_answers_202_and_runs_the_chain(client, db_session, eager):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course)

    response = client.post(
        f"/api/v1/payments/{payment.id}/confirm", json={"provider_payment_id": "pp_1"}
    )
    assert response.status_code == 202
    assert response.json["status"] == "succeeded"

    detail = client.get(f"/api/v1/payments/{payment.id}").json
    assert detail["fulfilment"]["state"] == "scheduled"
    assert detail["fulfilment"]["sessions_scheduled"] == 7
    assert detail["fulfilment"]["allocation"]["trainer"]["name"].startswith("Trainer")
    assert [e["type"] for e in detail["timeline"]] == [
        "PURCHASE_CONFIRMED",
        "PURCHASE_CREATED",
        "TRAINER_ALLOCATED",
        "SESSIONS_GENERATED",
    ]
    outbox = db_session.scalars(select(OutboxMessage)).one()
    assert outbox.published_at is not None


def test_confirming_again_answers_the_same_and_publishes_nothing_new(client, db_session, eager):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course)
    url = f"/api/v1/payments/{payment.id}/confirm"
    first = client.post(url, json={"provider_payment_id": "pp_1"})
    again = client.post(url, json={"provider_payment_id": "pp_1"})
    assert again.status_code == 202
    assert again.json == first.json
    assert db_session.scalar(select(func.count()).select_from(OutboxMessage)) == 1
    assert db_session.scalar(select(func.count()).select_from(Purchase)) == 1


def test_confirming_with_another_provider_id_is_a_conflict(client, db_session, eager):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course)
    url = f"/api/v1/payments/{payment.id}/confirm"
    client.post(url, json={"provider_payment_id": "pp_1"})
    other = client.post(url, json={"provider_payment_id": "pp_2"})
    assert other.status_code == 409
    assert other.json["error"]["code"] == "already_confirmed"


def test_a_provider_id_cannot_confirm_two_payments(client, db_session, eager):
    student, course, course2 = (
        make_student(db_session),
        make_course(db_session),
        make_course(db_session),
    )
    make_trainer(db_session, [course, course2])
    first = make_payment(db_session, student, course)
    second = make_payment(db_session, student, course2)
    client.post(f"/api/v1/payments/{first.id}/confirm", json={"provider_payment_id": "pp_1"})
    response = client.post(
        f"/api/v1/payments/{second.id}/confirm", json={"provider_payment_id": "pp_1"}
    )
    assert response.status_code == 409
    assert response.json["error"]["code"] == "provider_payment_id_in_use"
    db_session.expire_all()
    assert db_session.get(Payment, second.id).status == "pending"


def test_unknown_payment_is_404(client, db_connection):
    unknown = uuid.uuid4()
    confirm = client.post(f"/api/v1/payments/{unknown}/confirm", json={"provider_payment_id": "p"})
    assert confirm.status_code == 404
    assert confirm.json["error"]["code"] == "payment_not_found"
    assert client.get(f"/api/v1/payments/{unknown}").status_code == 404
    assert client.get("/api/v1/payments/not-a-uuid").status_code == 404
