"""Hostile input: rate limits, header-parser fuzzing, access control, secrets in logs."""

from __future__ import annotations

import dataclasses
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from tests.conftest import services, student_auth
from tests.conftest import settings as TEST_SETTINGS
from tests.factories import make_student


def test_public_endpoints_are_rate_limited_with_a_json_429(db_session):
    app = create_app(
        dataclasses.replace(TEST_SETTINGS, rate_limit_public="3/minute"),
        testing=True,
        services=services,  # the test's database and cache: only the limit differs
    )
    client = app.test_client()
    student = make_student(db_session)
    url, auth = f"/api/v1/students/{student.id}/home", student_auth(student.id)
    assert [client.get(url, headers=auth).status_code for _ in range(3)] == [200, 200, 200]
    limited = client.get(url, headers=auth)
    assert limited.status_code == 429
    assert limited.json["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert client.get("/healthz").status_code == 200  # not a public API endpoint
    admin = {"Authorization": "Bearer test-admin-token"}
    assert client.get(url, headers=admin).status_code == 200  # operators' tools are exempt


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(
            st.tuples(st.sampled_from(["t", "v1", "v0", "x", ""]), st.text(max_size=70)),
            max_size=6,
        ).map(lambda parts: ",".join(f"{k}={v}" for k, v in parts)),
    )
)
def test_any_forged_stripe_signature_is_a_400_never_a_500(client, db_connection, header):
    """Stripe's library parses the header; whatever a forger sends, the answer is the
    documented 400 (the header must be sendable: latin-1, no line breaks)."""
    if not header.isprintable() or not header.isascii():
        return
    response = client.post(
        "/api/v1/webhooks/stripe",
        data=b'{"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {}}}',
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_signature"


def test_secrets_never_reach_the_logs(client, caplog, db_connection):
    caplog.set_level(logging.DEBUG)
    client.post("/api/v1/students", json={}, headers={"Authorization": "Bearer test-admin-token"})
    client.get("/readyz")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "test-admin-token" not in logged
    assert "whsec_test" not in logged
    assert "sk_test_tutorflow_sandbox" not in logged
