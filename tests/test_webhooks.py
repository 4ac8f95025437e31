"""Stripe's webhook: checked by stripe.WebhookSignature, confirms through the same
verify step as the student's "I paid", fails and refunds; forged, stale and replayed
deliveries change nothing."""

import json
import time

from sqlalchemy import func, select

from models import OutboxKind, OutboxMessage, Payment, Purchase, WebhookEvent
from tests.conftest import student_auth
from tests.factories import make_course, make_payment, make_student, make_trainer, pay
from tests.webhook_client import (
    URL,
    charge_refunded,
    deliver,
    intent_succeeded,
    signed,
    stripe_event,
)


def _payment(db_session, *, paid: bool = True):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    return make_payment(db_session, student, course, paid=paid)


def count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def test_payment_intent_succeeded_confirms_and_the_chain_verifies(client, db_session, eager):
    payment = _payment(db_session)
    response = deliver(client, intent_succeeded(payment))
    assert response.status_code == 200
    assert (response.json["duplicate"], response.json["handled"]) == (False, True)
    detail = client.get(
        f"/api/v1/payments/{payment.id}", headers=student_auth(payment.student_id)
    ).json
    assert detail["status"] == "succeeded"
    assert detail["fulfilment"]["sessions_scheduled"] == 7
    assert detail["timeline"][0]["payload"]["source"] == "webhook"


def test_a_forged_succeeded_event_for_an_unpaid_intent_grants_nothing(client, db_session, eager):
    """Even correctly signed, the event only starts the verify step: the provider's own
    answer (not paid) decides."""
    payment = _payment(db_session, paid=False)
    assert deliver(client, intent_succeeded(payment)).status_code == 200
    db_session.expire_all()
    assert db_session.get(Payment, payment.id).status == "pending"
    assert count(db_session, Purchase) == 0


def test_a_redelivered_event_is_a_no_op(client, db_session, eager):
    payment = _payment(db_session)
    event = intent_succeeded(payment, event_id="evt_same")
    assert deliver(client, event).json["duplicate"] is False
    again = deliver(client, event)
    assert again.status_code == 200
    assert again.json["duplicate"] is True
    assert (
        db_session.scalar(
            select(func.count()).where(OutboxMessage.kind == OutboxKind.START_PIPELINE)
        )
        == 1
    )


def test_webhook_after_client_confirm_changes_nothing(client, db_session, eager):
    payment = _payment(db_session)
    confirm = client.post(
        f"/api/v1/payments/{payment.id}/confirm",
        json={},
        headers=student_auth(payment.student_id),
    )
    assert confirm.status_code == 202
    assert deliver(client, intent_succeeded(payment)).status_code == 200
    assert (
        db_session.scalar(
            select(func.count()).where(OutboxMessage.kind == OutboxKind.START_PIPELINE)
        )
        == 1
    )
    assert count(db_session, Purchase) == 1


def test_payment_failed_fails_a_pending_payment(client, db_session):
    payment = _payment(db_session, paid=False)
    pay(payment.provider_payment_id, "pm_card_chargeDeclined")
    event = stripe_event(
        "payment_intent.payment_failed",
        {
            "id": payment.provider_payment_id,
            "object": "payment_intent",
            "status": "requires_payment_method",
            "metadata": {"payment_id": str(payment.id)},
            "last_payment_error": {"message": "Your card was declined."},
        },
    )
    assert deliver(client, event).json["status"] == "failed"
    db_session.expire_all()
    failed = db_session.get(Payment, payment.id)
    assert (failed.status, failed.failure_reason) == ("failed", "Your card was declined.")


def test_charge_refunded_refunds_and_compensates_without_calling_back(client, db_session, eager):
    payment = _payment(db_session)
    deliver(client, intent_succeeded(payment))
    assert count(db_session, Purchase) == 1
    response = deliver(client, charge_refunded(payment))
    assert response.json["status"] == "refunded"
    db_session.expire_all()
    assert db_session.scalars(select(Purchase)).one().is_active is False


def test_missing_or_malformed_signature_is_400_and_changes_nothing(client, db_session):
    payment = _payment(db_session)
    body = json.dumps(intent_succeeded(payment)).encode()
    for headers in ({}, {"Stripe-Signature": "nonsense"}, {"Stripe-Signature": "t=1"}):
        response = client.post(
            URL, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json["error"]["code"] == "invalid_signature"
    assert count(db_session, WebhookEvent) == 0
    assert db_session.get(Payment, payment.id).status == "pending"


def test_wrong_secret_or_stale_timestamp_is_400(client, db_session):
    payment = _payment(db_session)
    event = intent_succeeded(payment)
    assert deliver(client, event, secret="whsec_not_ours").status_code == 400
    stale = deliver(client, event, timestamp=int(time.time()) - 301)
    assert stale.status_code == 400
    assert stale.json["error"]["code"] == "invalid_signature"
    assert count(db_session, WebhookEvent) == 0
    assert db_session.get(Payment, payment.id).status == "pending"


def test_either_secret_verifies_while_rotating(client, db_session):
    payment = _payment(db_session)
    assert deliver(client, intent_succeeded(payment), secret="whsec_test_old").status_code == 200
    assert deliver(client, intent_succeeded(payment), secret="whsec_test").status_code == 200


def test_signature_covers_the_raw_body(client, db_session):
    payment = _payment(db_session)
    body = json.dumps(intent_succeeded(payment)).encode()
    headers = signed(body)
    tampered = body.replace(b'"amount": 9900', b'"amount": 1')
    assert tampered != body
    assert client.post(URL, data=tampered, headers=headers).status_code == 400


def test_an_unknown_type_or_payment_is_acknowledged_and_ignored(client, db_session):
    ignored = deliver(client, stripe_event("customer.created", {"id": "cus_1"}))
    assert ignored.status_code == 200
    assert ignored.json["handled"] is False
    unknown = deliver(
        client, stripe_event("payment_intent.succeeded", {"id": "pi_other", "metadata": {}})
    )
    assert (unknown.status_code, unknown.json["handled"]) == (200, False)


def test_an_event_whose_metadata_names_another_payment_is_refused(client, db_session):
    payment, other = _payment(db_session), _payment(db_session)
    event = intent_succeeded(payment)
    event["data"]["object"]["metadata"]["payment_id"] = str(other.id)
    assert deliver(client, event).status_code == 409
    assert count(db_session, WebhookEvent) == 0


def test_signed_but_not_an_event_is_400(client, db_connection):
    for body in (
        b"{not json",
        b"[]",
        b'{"id": "evt_1"}',
        b'{"id": "evt_1", "type": "payment_intent.succeeded", "data": {}}',
        b'{"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": []}}',
        b'{"id": 1, "type": "payment_intent.succeeded", "data": {"object": {}}}',
    ):
        response = client.post(URL, data=body, headers=signed(body))
        assert response.status_code == 400, body
