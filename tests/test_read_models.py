"""Student read models: cache-aside with race-free invalidation, live events, polling."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

import jwt
import pytest

from bootstrap import bootstrap
from core import cache
from core.cache import read_model_key
from domain import fulfilment
from domain.clock import utcnow
from domain.read_models import student_home
from tests.conftest import ADMIN, open_session, settings, student_auth
from tests.factories import make_course, make_payment, make_student, make_trainer


def confirm(client, payment) -> None:
    url = f"/api/v1/payments/{payment.id}/confirm"
    assert client.post(url, json={}, headers=ADMIN).status_code == 202


def test_home_shows_upcoming_sessions_with_trainer_and_course(client, db_session, eager):
    student, course = make_student(db_session), make_course(db_session, title="Chess")
    trainer = make_trainer(db_session, [course])
    payment = make_payment(db_session, student, course)
    empty = client.get(f"/api/v1/students/{student.id}/home", headers=student_auth(student.id))
    assert empty.status_code == 200
    assert empty.json["upcoming_sessions"] == []

    confirm(client, payment)
    home = client.get(f"/api/v1/students/{student.id}/home", headers=student_auth(student.id))
    assert home.headers["X-Cache"] == "miss"  # the chain's commits invalidated it
    sessions = home.json["upcoming_sessions"]
    assert len(sessions) == 7
    assert {s["course"] for s in sessions} == {"Chess"}
    assert {s["trainer"] for s in sessions} == {trainer.name}
    [active] = home.json["active_courses"]
    assert (active["tier"], active["sessions_remaining"], active["status"]) == (10, 10, "active")
    again = client.get(f"/api/v1/students/{student.id}/home", headers=student_auth(student.id))
    assert again.headers["X-Cache"] == "hit"
    assert again.json == home.json


def test_learning_counts_done_and_remaining(client, db_session, eager, clock):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    confirm(client, make_payment(db_session, student, course, tier=20))
    [course_view] = client.get(
        f"/api/v1/students/{student.id}/learning", headers=student_auth(student.id)
    ).json["courses"]
    assert course_view["sessions_done"] == 0
    assert course_view["sessions_upcoming"] == 7
    assert course_view["sessions_remaining"] == 20
    assert course_view["next_session_at"] is not None


def test_unknown_student_is_404_and_not_cached(client, db_connection, redis_client):
    for view in ("home", "learning"):
        response = client.get(f"/api/v1/students/424242/{view}", headers=ADMIN)
        assert response.status_code == 404
        assert response.json["error"]["code"] == "student_not_found"
    assert redis_client.get(read_model_key("home", 424242)) is None


def test_recent_events_is_a_cursor_over_the_students_events(client, db_session, eager):
    student, course = make_student(db_session), make_course(db_session)
    make_trainer(db_session, [course])
    confirm(client, make_payment(db_session, student, course))
    auth = student_auth(student.id)
    first = client.get("/api/v1/events/recent", headers=auth).json
    assert [e["type"] for e in first["events"]] == [
        "PAYMENT_CONFIRMATION_REQUESTED",
        "PAYMENT_VERIFIED",
        "PURCHASE_CREATED",
        "TRAINER_ALLOCATED",
        "SESSIONS_GENERATED",
    ]
    later = client.get(f"/api/v1/events/recent?since={first['next_since']}", headers=auth)
    assert later.json == {"events": [], "next_since": first["next_since"]}
    other = make_student(db_session)
    mine_only = client.get(f"/api/v1/events/recent?student_id={other.id}", headers=auth)
    assert mine_only.status_code == 403
    as_other = client.get("/api/v1/events/recent", headers=student_auth(other.id))
    assert as_other.json["events"] == []
    assert client.get("/api/v1/events/recent").status_code == 401
    everyone = client.get("/api/v1/events/recent", headers=ADMIN)  # an operator's view
    assert len(everyone.json["events"]) == len(first["events"])


def test_metrics_report_the_hit_ratio(client, db_session):
    student = make_student(db_session)
    for _ in range(4):
        client.get(f"/api/v1/students/{student.id}/home", headers=student_auth(student.id))
    body = client.get("/metrics").get_data(as_text=True)
    assert 'tutorflow_read_model_cache_hit_ratio{view="home"} 0.75' in body


# --- the race: a slow reader that loaded before a commit ----------------------------


CACHE = bootstrap(settings).cache


def naive_cached_read_model(kind: str, student_id: int, load: Callable[[], str]):
    """Plain cache-aside, for contrast: GET, load on a miss, SET."""
    client = CACHE.client
    key = read_model_key(kind, student_id)
    if (entry := client.get(key)) is not None:
        return entry.decode(), True
    body = load()
    client.set(key, body, ex=cache.READ_MODEL_TTL)
    return body, False


def run_race(read: Callable) -> list[dict[str, Any]]:
    """Reader loads, pauses; the writer commits and invalidates; the reader stores.
    Returns what a fresh request then gets from the cache path."""
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        make_trainer(session, [course])
        payment = make_payment(session, student, course, slot=time(9, 0), confirmed=True)
        student_id, payment_id = student.id, payment.id

    loaded, release = threading.Event(), threading.Event()

    def slow_load() -> str:
        with open_session() as session:
            model = student_home(session, student_id, now=utcnow())
        loaded.set()  # it has read the database: no sessions yet
        assert release.wait(10)
        return json.dumps(model, default=str)

    reader = threading.Thread(target=lambda: read("home", student_id, slow_load))
    reader.start()
    assert loaded.wait(10)
    # The writer: the whole pipeline commits, then invalidates after its commit.
    with open_session() as session, session.begin():
        purchase = fulfilment.create_purchase(session, payment_id)
        allocation = fulfilment.allocate_trainer(session, purchase.id)
        fulfilment.schedule_sessions(session, allocation.id, now=utcnow(), window=7)
    CACHE.invalidate_and_announce([(student_id, {"type": "TEST"})])
    release.set()
    reader.join(10)

    def fresh_load() -> str:
        with open_session() as session:
            return json.dumps(student_home(session, student_id, now=utcnow()), default=str)

    body, _ = read("home", student_id, fresh_load)
    return json.loads(body)["upcoming_sessions"]


def test_a_slow_reader_never_writes_stale_data_over_an_invalidation(committed):
    assert len(run_race(CACHE.cached_read_model)) == 7


def test_the_same_interleaving_breaks_a_naive_cache_aside(committed):
    # Proof that the race above is real: without versions the stale read wins.
    assert run_race(naive_cached_read_model) == []


# --- live events ---------------------------------------------------------------------


def test_stream_delivers_events_published_after_commit(client, db_session):
    student = make_student(db_session)
    ticket = client.post(
        f"/api/v1/students/{student.id}/stream-tickets", headers=student_auth(student.id)
    ).json["ticket"]
    response = client.get(
        f"/api/v1/students/{student.id}/events/stream?ticket={ticket}", buffered=False
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    chunks = (chunk.decode() for chunk in response.response)
    assert "connected" in next(chunks)
    CACHE.announce([(student.id, {"type": "SESSIONS_GENERATED", "count": 7})])
    event = next(chunks)
    assert event.startswith("event: update\ndata: ")
    assert json.loads(event.split("data: ", 1)[1])["type"] == "SESSIONS_GENERATED"
    response.close()


def test_streams_are_capped_per_process_so_requests_keep_flowing(client, db_session):
    student = make_student(db_session)
    url, auth = f"/api/v1/students/{student.id}/events/stream", student_auth(student.id)
    open_streams = [client.get(url, headers=auth, buffered=False) for _ in range(2)]
    for stream in open_streams:
        next(iter(stream.response))
    refused = client.get(url, headers=auth)
    # Admission control, not a server error: 429, and when to try again (a slot frees
    # within a stream's length); the page polls meanwhile.
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "streams_full"
    assert int(refused.headers["Retry-After"]) == math.ceil(settings.stream_seconds)
    assert (
        client.get(
            f"/api/v1/students/{student.id}/home", headers=student_auth(student.id)
        ).status_code
        == 200
    )
    for stream in open_streams:
        stream.close()
    reopened = client.get(url, headers=auth, buffered=False)
    assert reopened.status_code == 200
    reopened.close()


@pytest.mark.parametrize("path", ["/students/{id}/events/stream", "/students/{id}/home"])
def test_unknown_student_stream_or_home_is_404(client, db_connection, path):
    assert client.get("/api/v1" + path.format(id=999999), headers=ADMIN).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/students/{id}/home",
        "/students/{id}/learning",
        "/students/{id}/events/stream",
        "/events/recent?student_id={id}",
    ],
)
def test_a_student_cannot_read_another_students_data(client, db_session, path):
    alice, bob = make_student(db_session), make_student(db_session)
    url = "/api/v1" + path.format(id=bob.id)
    assert client.get(url, headers=student_auth(alice.id)).status_code == 403
    assert client.get(url).status_code == 401
    expired = bootstrap(settings).tokens.issue(bob.id, ttl=timedelta(seconds=-60))
    assert client.get(url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    forged = jwt.encode(
        {
            "sub": str(bob.id),
            "aud": settings.jwt_audience,
            "iss": settings.jwt_issuer,
            "exp": datetime.now(UTC) + timedelta(hours=1),
        },
        "not-the-platforms-secret-32-bytes!!",
        algorithm="HS256",
    )
    assert client.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_a_stream_ticket_opens_only_its_own_students_stream(client, db_session):
    alice, bob = make_student(db_session), make_student(db_session)
    assert (
        client.post(f"/api/v1/students/{bob.id}/stream-tickets", headers=student_auth(alice.id))
    ).status_code == 403
    ticket = client.post(
        f"/api/v1/students/{alice.id}/stream-tickets", headers=student_auth(alice.id)
    ).json["ticket"]
    refused = client.get(f"/api/v1/students/{bob.id}/events/stream?ticket={ticket}")
    assert refused.status_code == 403
    garbage = client.get(f"/api/v1/students/{alice.id}/events/stream?ticket=nope")
    assert garbage.status_code == 401
