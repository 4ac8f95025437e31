"""The signed provider webhook: confirms like the API, dedupes, rejects bad signatures."""

import json
import time

from sqlalchemy import func, select

from models import OutboxMessage, Payment, WebhookEvent
from tests.factories import make_course, make_payment, make_student, make_trainer
from tests.webhook_client import deliver, signed, succeeded_event

URL = "/api/v1/webhooks/payments"


def _payment(db_session):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    return make_payment(db_session, student, course)


def test_payment_succeeded_confirms_and_runs_the_chain(client, db_session, eager):
    payment = _payment(db_session)
    response = deliver(client, succeeded_event(payment.id, "pp_1"))
    assert response.status_code == 200
    assert response.json["duplicate"] is False
    detail = client.get(f"/api/v1/payments/{payment.id}").json
    assert detail["status"] == "succeeded"
    assert detail["fulfilment"]["sessions_scheduled"] == 7
    assert detail["timeline"][0]["payload"]["source"] == "webhook"


def test_a_redelivered_event_is_a_no_op(client, db_session, eager):
    payment = _payment(db_session)
    event = succeeded_event(payment.id, "pp_1", event_id="evt_same")
    assert deliver(client, event).json["duplicate"] is False
    again = deliver(client, event)
    assert again.status_code == 200
    assert again.json["duplicate"] is True
    assert db_session.scalar(select(func.count()).select_from(OutboxMessage)) == 1


def test_webhook_after_client_confirm_changes_nothing(client, db_session, eager):
    payment = _payment(db_session)
    client.post(f"/api/v1/payments/{payment.id}/confirm", json={"provider_payment_id": "pp_1"})
    assert deliver(client, succeeded_event(payment.id, "pp_1")).status_code == 200
    assert db_session.scalar(select(func.count()).select_from(OutboxMessage)) == 1


def test_missing_or_malformed_signature_header_is_400(client, db_session):
    payment = _payment(db_session)
    body = json.dumps(succeeded_event(payment.id, "pp_1")).encode()
    for headers in ({}, {"X-Signature": "nonsense"}, {"X-Signature": "t=1"}):
        response = client.post(
            URL, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json["error"]["code"] == "bad_signature_header"
    assert db_session.get(Payment, payment.id).status == "pending"


def test_wrong_secret_or_stale_timestamp_is_401(client, db_session):
    payment = _payment(db_session)
    event = succeeded_event(payment.id, "pp_1")
    assert deliver(client, event, secret="not-ours").status_code == 401
    stale = deliver(client, event, timestamp=int(time.time()) - 301)
    assert stale.status_code == 401
    assert stale.json["error"]["code"] == "invalid_signature"
    assert db_session.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    assert db_session.get(Payment, payment.id).status == "pending"


def test_signature_covers_the_raw_body(client, db_session):
    payment = _payment(db_session)
    body = json.dumps(succeeded_event(payment.id, "pp_1")).encode()
    headers = signed(body)
    tampered = body.replace(b"pp_1", b"pp_2")
    assert client.post(URL, data=tampered, headers=headers).status_code == 401


def test_unknown_payment_is_404_and_the_event_id_stays_free(client, db_session, eager):
    event = succeeded_event("00000000-0000-4000-8000-000000000000", "pp_1")
    response = deliver(client, event)
    assert response.status_code == 404
    assert db_session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


def test_signed_but_invalid_event_is_422(client, db_connection):
    response = deliver(client, {"id": "evt_1", "type": "payment.exploded", "data": {}})
    assert response.status_code == 422
    assert "type" in response.json["error"]["details"]["json"]


def test_signed_but_not_json_is_400(client, db_connection):
    body = b"{not json"
    response = client.post(URL, data=body, headers=signed(body))
    assert response.status_code == 400
