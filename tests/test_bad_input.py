"""Bad input on every endpoint: the documented 4xx, a JSON error body, nothing changed."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from models import Base
from tests.conftest import ADMIN
from tests.factories import make_course, make_payment, make_student

PAYMENT = "{payment}"
TOO_BIG_ID = 2**63


def _counts(session) -> dict[str, int]:
    return {
        table.name: session.scalar(select(func.count()).select_from(table))
        for table in Base.metadata.sorted_tables
    }


CASES = [
    # (name, method, path, kwargs, status, code)
    (
        "students: malformed json",
        "post",
        "/api/v1/students",
        {"data": "{", "content_type": "application/json", "headers": ADMIN},
        400,
        "bad_request",
    ),
    (
        "students: wrong types",
        "post",
        "/api/v1/students",
        {"json": {"name": 5, "email": "x", "timezone": 1}, "headers": ADMIN},
        422,
        "validation_error",
    ),
    (
        "students: missing fields",
        "post",
        "/api/v1/students",
        {"json": {}, "headers": ADMIN},
        422,
        "validation_error",
    ),
    (
        "students: unknown field",
        "post",
        "/api/v1/students",
        {
            "json": {"name": "a", "email": "a@b.io", "timezone": "UTC", "admin": True},
            "headers": ADMIN,
        },
        422,
        "validation_error",
    ),
    (
        "courses: not an object",
        "post",
        "/api/v1/courses",
        {"json": ["title"], "headers": ADMIN},
        422,
        "validation_error",
    ),
    (
        "trainers: zero capacity",
        "post",
        "/api/v1/trainers",
        {
            "json": {"name": "t", "email": "t@b.io", "max_students": 0, "course_ids": [1]},
            "headers": ADMIN,
        },
        422,
        "validation_error",
    ),
    (
        "trainers: huge course id",
        "post",
        "/api/v1/trainers",
        {
            "json": {"name": "t", "email": "t@b.io", "max_students": 1, "course_ids": [TOO_BIG_ID]},
            "headers": ADMIN,
        },
        422,
        "validation_error",
    ),
    (
        "payments: malformed json",
        "post",
        "/api/v1/payments",
        {"data": '{"tier": 10', "content_type": "application/json"},
        400,
        "bad_request",
    ),
    (
        "payments: not json",
        "post",
        "/api/v1/payments",
        {"data": "tier=10", "content_type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
    ),
    (
        "payments: wrong types",
        "post",
        "/api/v1/payments",
        {
            "json": {
                "student_id": "1",
                "course_id": 1.5,
                "tier": "10",
                "time_slot": 1730,
                "amount_cents": "99",
                "currency": "eur",
            }
        },
        422,
        "validation_error",
    ),
    (
        "payments: bad tier and slot",
        "post",
        "/api/v1/payments",
        {
            "json": {
                "student_id": 1,
                "course_id": 1,
                "tier": 15,
                "time_slot": "25:00",
                "amount_cents": 100,
                "currency": "EUR",
            }
        },
        422,
        "validation_error",
    ),
    (
        "payments: unknown student",
        "post",
        "/api/v1/payments",
        {
            "json": {
                "student_id": 424242,
                "course_id": 1,
                "tier": 10,
                "time_slot": "10:00",
                "amount_cents": 100,
                "currency": "EUR",
            }
        },
        404,
        "unknown_student",
    ),
    (
        "payments: id beyond bigint",
        "post",
        "/api/v1/payments",
        {
            "json": {
                "student_id": TOO_BIG_ID,
                "course_id": 1,
                "tier": 10,
                "time_slot": "10:00",
                "amount_cents": 100,
                "currency": "EUR",
            }
        },
        422,
        "validation_error",
    ),
    (
        "payments: negative amount",
        "post",
        "/api/v1/payments",
        {
            "json": {
                "student_id": 1,
                "course_id": 1,
                "tier": 10,
                "time_slot": "10:00",
                "amount_cents": -5,
                "currency": "EUR",
            }
        },
        422,
        "validation_error",
    ),
    (
        "payments: huge body",
        "post",
        "/api/v1/payments",
        {"data": '{"x": "' + "a" * 70_000 + '"}', "content_type": "application/json"},
        413,
        "payload_too_large",
    ),
    (
        "confirm: a client cannot say what the provider took",
        "post",
        f"/api/v1/payments/{PAYMENT}/confirm",
        {"json": {"provider_payment_id": "pi_made_up"}},
        422,
        "validation_error",
    ),
    (
        "confirm: malformed json",
        "post",
        f"/api/v1/payments/{PAYMENT}/confirm",
        {"data": "{", "content_type": "application/json"},
        400,
        "bad_request",
    ),
    (
        "confirm: unknown payment",
        "post",
        f"/api/v1/payments/{uuid.uuid4()}/confirm",
        {"json": {}},
        404,
        "payment_not_found",
    ),
    (
        "confirm: not a uuid",
        "post",
        "/api/v1/payments/123/confirm",
        {"json": {}},
        404,
        "not_found",
    ),
    (
        "confirm: wrong method",
        "get",
        f"/api/v1/payments/{PAYMENT}/confirm",
        {},
        405,
        "method_not_allowed",
    ),
    (
        "webhook: no signature",
        "post",
        "/api/v1/webhooks/stripe",
        {"json": {"id": "e", "type": "payment_intent.succeeded", "data": {"object": {}}}},
        400,
        "invalid_signature",
    ),
    (
        "webhook: wrong signature",
        "post",
        "/api/v1/webhooks/stripe",
        {"json": {"id": "e"}, "headers": {"Stripe-Signature": "t=1700000000,v1=" + "0" * 64}},
        400,
        "invalid_signature",
    ),
    ("unknown route", "get", "/api/v1/nothing-here", {}, 404, "not_found"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    client, db_session, method, path, kwargs, status, code
):
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course)
    db_session.flush()
    before = _counts(db_session)

    if path.startswith("/api/v1/payments") and "headers" not in kwargs:
        kwargs = {**kwargs, "headers": ADMIN}  # authenticated: the body is what is tested
    response = getattr(client, method)(path.replace(PAYMENT, str(payment.id)), **kwargs)

    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    assert response.json["error"]["code"] == code
    assert set(response.json["error"]) == {"code", "message", "details"}
    db_session.expire_all()
    assert _counts(db_session) == before
    assert db_session.get(type(payment), payment.id).status == "pending"


def test_admin_routes_check_the_token_before_the_body(client, db_connection):
    """Without credentials the answer is 401 whatever the body holds (not a 422 that
    would tell a stranger how the body should look)."""
    for path in ("/api/v1/students", "/api/v1/courses", "/api/v1/trainers"):
        response = client.post(path, json={"nonsense": True})
        assert response.status_code == 401, path
        assert response.json["error"]["code"] == "unauthorized"


def test_a_wrong_method_is_405_with_the_allow_header(client, db_connection):
    response = client.get("/api/v1/students")
    assert response.status_code == 405
    assert response.headers["Allow"] == "OPTIONS, POST"
