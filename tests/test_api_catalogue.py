"""Catalogue endpoints: writes admin only, validated, 201 with the id; the courses on
sale, read with any student's token (or the admin's), changed by an operator."""

from datetime import datetime, time, timedelta

from sqlalchemy import func, select

from actions import catalogue, payments
from domain import fulfilment
from domain.clock import utcnow
from domain.payments import Order, request_confirmation
from models import DeadLetter, Payment, Student, TrainerCourse, TutoringSession
from tasks.pipeline import verify_payment
from tests.conftest import ADMIN, student_auth
from tests.factories import (
    catalogue_price,
    make_allocation,
    make_course,
    make_payment,
    make_student,
    make_trainer,
    pay,
    provider,
)


def test_create_student_course_and_trainer(client, db_session):
    student = client.post(
        "/api/v1/students",
        json={"name": "Ana", "email": "ana@example.com", "timezone": "America/Lima"},
        headers=ADMIN,
    )
    assert student.status_code == 201
    assert student.json["id"] > 0
    course = client.post("/api/v1/courses", json={"title": "Chess"}, headers=ADMIN)
    assert course.status_code == 201
    trainer = client.post(
        "/api/v1/trainers",
        json={
            "name": "Tom",
            "email": "tom@example.com",
            "max_students": 4,
            "course_ids": [course.json["id"]],
        },
        headers=ADMIN,
    )
    assert trainer.status_code == 201
    assert trainer.json["course_ids"] == [course.json["id"]]
    assert trainer.json["active_students"] == 0
    assert db_session.scalar(select(func.count()).select_from(TrainerCourse)) == 1


def test_catalogue_needs_the_admin_token(client, db_session):
    body = {"name": "Ana", "email": "ana@example.com", "timezone": "UTC"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = client.post("/api/v1/students", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
    assert db_session.scalar(select(func.count()).select_from(Student)) == 0


def test_duplicate_email_is_a_conflict(client):
    body = {"name": "Ana", "email": "ana@example.com", "timezone": "UTC"}
    assert client.post("/api/v1/students", json=body, headers=ADMIN).status_code == 201
    again = client.post("/api/v1/students", json=body, headers=ADMIN)
    assert again.status_code == 409
    assert again.json["error"]["code"] == "email_taken"


def test_unknown_timezone_is_rejected(client):
    body = {"name": "Ana", "email": "ana@example.com", "timezone": "Mars/Olympus"}
    response = client.post("/api/v1/students", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert "timezone" in response.json["error"]["details"]["json"]


def test_trainer_with_unknown_course_is_rejected(client):
    body = {"name": "T", "email": "t@example.com", "max_students": 2, "course_ids": [999]}
    response = client.post("/api/v1/trainers", json=body, headers=ADMIN)
    assert response.status_code == 404
    assert response.json["error"]["details"] == {"course_ids": [999]}


# --- the courses on sale ---------------------------------------------------------------


def test_the_catalogue_lists_courses_by_id_a_page_at_a_time(client, db_session):
    courses = [make_course(db_session, title=f"Course {n}") for n in range(3)]
    make_trainer(db_session, courses)
    student = make_student(db_session)
    auth = student_auth(student.id)

    first = client.get("/api/v1/courses?per_page=2", headers=auth)
    assert first.status_code == 200, first.json
    assert (first.json["page"], first.json["per_page"], first.json["total"]) == (1, 2, 3)
    assert [c["id"] for c in first.json["items"]] == [courses[0].id, courses[1].id]
    assert first.json["items"][0] == {
        "id": courses[0].id,
        "title": "Course 0",
        "session_minutes": 60,
        "currency": "EUR",
        "prices": {"10": 9900, "20": 18900, "30": 26900},
        "purchasable": True,
    }
    second = client.get("/api/v1/courses?per_page=2&page=2", headers=auth)
    assert [c["id"] for c in second.json["items"]] == [courses[2].id]
    past_the_end = client.get("/api/v1/courses?per_page=2&page=3", headers=auth)
    assert (past_the_end.json["items"], past_the_end.json["total"]) == ([], 3)
    default = client.get("/api/v1/courses", headers=ADMIN)
    assert (default.json["page"], default.json["per_page"]) == (1, 50)
    assert [c["id"] for c in default.json["items"]] == [c.id for c in courses]


def test_a_course_by_id_and_an_unknown_one(client, db_session):
    course = make_course(db_session, title="Chess", session_minutes=45)
    make_trainer(db_session, [course])
    auth = student_auth(make_student(db_session).id)
    found = client.get(f"/api/v1/courses/{course.id}", headers=auth)
    assert found.status_code == 200
    listed = client.get("/api/v1/courses", headers=auth).json["items"]
    assert found.json == listed[0]
    assert (found.json["title"], found.json["session_minutes"]) == ("Chess", 45)

    for method in ("get", "patch"):
        missing = getattr(client, method)(f"/api/v1/courses/{course.id + 1000}", headers=ADMIN)
        assert missing.status_code == 404, method
        assert missing.json["error"]["code"] == "unknown_course"


def test_any_student_token_or_the_admin_reads_the_catalogue(client, db_session):
    """No student row needed: the catalogue is for anyone the platform signed in."""
    course = make_course(db_session)
    for headers in (student_auth(424242), ADMIN):
        assert client.get("/api/v1/courses", headers=headers).status_code == 200
        assert client.get(f"/api/v1/courses/{course.id}", headers=headers).status_code == 200
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic x"}):
        for path in ("/api/v1/courses", f"/api/v1/courses/{course.id}"):
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert refused.json["error"]["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_bad_paging_is_a_422(client, db_session):
    auth = student_auth(make_student(db_session).id)
    for query in ("per_page=0", "per_page=101", "page=0", "page=x"):
        response = client.get(f"/api/v1/courses?{query}", headers=auth)
        assert response.status_code == 422, query
        assert response.json["error"]["code"] == "validation_error"


def test_purchasable_needs_an_active_trainer_with_room(client, db_session):
    course = make_course(db_session)

    def purchasable() -> bool:
        return client.get(f"/api/v1/courses/{course.id}", headers=ADMIN).json["purchasable"]

    assert purchasable() is False  # nobody teaches it
    other = make_course(db_session, title="Other")
    make_trainer(db_session, [other])
    assert purchasable() is False  # a trainer with room, for another course
    make_trainer(db_session, [course], is_active=False)
    assert purchasable() is False  # inactive
    full = make_trainer(db_session, [course], max_students=2)
    full.active_students = 2
    db_session.flush()
    assert purchasable() is False  # no room
    full.active_students = 1
    db_session.flush()
    assert purchasable() is True


def test_an_operator_changes_title_session_length_and_some_prices(client, db_session):
    course = make_course(db_session)
    make_trainer(db_session, [course])
    response = client.patch(
        f"/api/v1/courses/{course.id}",
        json={"title": "Algebra II", "session_minutes": 90, "prices": {"20": 19900}},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.json
    assert response.json == {
        "id": course.id,
        "title": "Algebra II",
        "session_minutes": 90,
        "currency": "EUR",
        "prices": {"10": 9900, "20": 19900, "30": 26900},
        "purchasable": True,
    }
    assert client.get(f"/api/v1/courses/{course.id}", headers=ADMIN).json == response.json
    # Nothing named, nothing changed: the course as it is.
    for kwargs in ({}, {"json": {}}):
        same = client.patch(f"/api/v1/courses/{course.id}", headers=ADMIN, **kwargs)
        assert (same.status_code, same.json) == (200, response.json)


def test_a_new_session_length_leaves_booked_sessions_as_they_are(client, db_session):
    """Sessions on the calendar keep their stored interval; the next one scheduled has
    the new length."""
    course = make_course(db_session)
    make_trainer(db_session, [course])
    now = utcnow()
    allocation = make_allocation(db_session, course, slot=time(10, 0), now=now)

    def sessions() -> dict[int, tuple[datetime, datetime]]:
        db_session.expire_all()
        found = db_session.scalars(
            select(TutoringSession).where(TutoringSession.allocation_id == allocation.id)
        )
        return {s.id: (s.starts_at, s.ends_at) for s in found}

    booked = sessions()
    assert len(booked) == 7
    assert {end - start for start, end in booked.values()} == {timedelta(minutes=60)}
    patched = client.patch(
        f"/api/v1/courses/{course.id}", json={"session_minutes": 120}, headers=ADMIN
    )
    assert patched.status_code == 200
    assert sessions() == booked

    fulfilment.schedule_sessions(db_session, allocation.id, now=now, window=8)
    added = {k: v for k, v in sessions().items() if k not in booked}
    assert [end - start for start, end in added.values()] == [timedelta(minutes=120)]


def test_only_an_operator_changes_a_course(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    for headers in ({}, student_auth(student.id), {"Authorization": "Bearer wrong"}):
        # The token is checked before the body: a stranger learns nothing of its shape.
        for body in ({"title": "Mine now"}, {"nonsense": True}):
            response = client.patch(f"/api/v1/courses/{course.id}", json=body, headers=headers)
            assert response.status_code == 401, (headers, body)
            assert response.json["error"]["code"] == "unauthorized"
    db_session.expire_all()
    assert db_session.get(type(course), course.id).title == "Algebra"


def test_bad_values_are_a_422_and_change_nothing(client, db_session):
    course = make_course(db_session)
    before = client.get(f"/api/v1/courses/{course.id}", headers=ADMIN).json
    for body in (
        {"session_minutes": 10},
        {"session_minutes": 241},
        {"session_minutes": "60"},
        {"title": ""},
        {"title": "a\u0000b"},
        {"title": "Fine", "prices": {"10": 0}},  # one bad value: nothing of it is written
        {"prices": {"15": 5000}},
        {"prices": {"20": 19900.5}},
        {"prices": {"20": 19900}, "currency": "USD"},  # the currency is fixed
        {"id": course.id + 1},
        ["title"],
    ):
        response = client.patch(f"/api/v1/courses/{course.id}", json=body, headers=ADMIN)
        assert response.status_code == 422, body
        assert response.json["error"]["code"] == "validation_error"
        assert set(response.json["error"]) == {"code", "message", "details"}
    db_session.expire_all()
    assert client.get(f"/api/v1/courses/{course.id}", headers=ADMIN).json == before


def test_a_pending_payment_keeps_its_price_and_is_verified_against_it(client, db_session, eager):
    """The catalogue's price changes while a student is paying: the payment keeps the
    amount and currency it was created at (the PaymentIntent's), the student pays that,
    and verification compares the provider's answer with the payment's own copy, so it
    passes; the next checkout charges the new price."""
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course)  # paid at the provider: 9900
    patched = client.patch(
        f"/api/v1/courses/{course.id}", json={"prices": {"10": 12900}}, headers=ADMIN
    )
    assert patched.json["prices"]["10"] == 12900
    db_session.expire_all()
    kept = db_session.get(Payment, payment.id)
    assert (kept.status, kept.amount_cents, kept.currency) == ("pending", 9900, "EUR")

    request_confirmation(db_session, payment.id, student_id=None, source="test")
    db_session.flush()
    result = verify_payment.apply(
        args=(str(payment.id),), kwargs={"correlation_id": str(payment.id)}, throw=False
    )
    assert result.successful(), result.traceback
    db_session.expire_all()
    verified = db_session.get(Payment, payment.id)
    assert (verified.status, verified.amount_cents) == ("succeeded", 9900)
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 0

    other = make_student(db_session)
    checkout = client.post(
        "/api/v1/payments",
        json={"course_id": course.id, "tier": 10, "time_slot": "17:30"},
        headers=student_auth(other.id),
    )
    assert checkout.status_code == 201, checkout.json
    assert checkout.json["amount_cents"] == 12900
    assert provider().retrieve_intent(checkout.json["provider_payment_id"]).amount == 12900


def test_a_price_change_during_a_checkout_leaves_the_payment_at_the_intents_price(
    database, db_session, eager
):
    """The checkout quotes, asks the provider for the PaymentIntent (outside any
    transaction), then writes the payment: a price changed in between must not reach
    the payment, or it would differ from what the student is charged and its
    verification would dead-letter a paid payment."""
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    sandbox = provider()

    class PriceChangesMeanwhile:
        def create_intent(self, **kwargs):
            intent = sandbox.create_intent(**kwargs)
            catalogue.update_course(database, course.id, prices={"tier_10": 12900})
            return intent

    answer = payments.checkout(
        database,
        PriceChangesMeanwhile(),
        Order(student_id=student.id, course_id=course.id, tier=10, time_slot=time(17, 30)),
        idempotency_key=None,
        fingerprint="-",
        render=lambda payment, secret, held_until: {
            "id": str(payment.id),
            "intent": payment.provider_payment_id,
        },
        hold_minutes=15,
    )
    db_session.expire_all()
    payment = db_session.get(Payment, answer.body["id"])
    intent = sandbox.retrieve_intent(answer.body["intent"])
    assert (intent.amount, intent.currency) == (9900, "EUR")
    assert (payment.amount_cents, payment.currency) == (9900, "EUR")
    db_session.refresh(course)
    assert catalogue_price(db_session, course, 10) == 12900

    pay(intent.id)
    request_confirmation(db_session, payment.id, student_id=None, source="test")
    db_session.flush()
    result = verify_payment.apply(
        args=(str(payment.id),), kwargs={"correlation_id": str(payment.id)}, throw=False
    )
    assert result.successful(), result.traceback
