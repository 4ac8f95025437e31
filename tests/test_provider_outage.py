"""The provider and the database misbehave under a real worker and a real API: nothing is
granted without the provider's word, nothing confirmed is lost, nothing hangs."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import time as clock_time

import pytest
from sqlalchemy import func, select, text

from app import create_app
from core.provider import PaymentProvider
from harness.processes import celery_worker, wait_until
from harness.serving import SandboxServer
from models import DeadLetter, Payment, Purchase, TutoringSession
from tests.conftest import ADMIN, open_session, services, settings
from tests.factories import make_course, make_payment, make_student, make_trainer

pytestmark = pytest.mark.worker


def seed(provider: PaymentProvider, count: int) -> list[str]:
    """`count` paid payments of distinct students at distinct slots, one trainer
    (quarter-hour sessions, so the slots do not overlap)."""
    with open_session() as session, session.begin():
        course = make_course(session, session_minutes=15)
        make_trainer(session, [course], max_students=count)
        return [
            str(
                make_payment(
                    session,
                    make_student(session),
                    course,
                    slot=clock_time(6 + n // 4, 15 * (n % 4)),
                    via=provider,
                ).id
            )
            for n in range(count)
        ]


def confirm_all(client, payment_ids: list[str]) -> None:
    for payment_id in payment_ids:
        response = client.post(f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN)
        assert response.status_code == 202


def count(model, *where) -> int:
    with open_session() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_a_provider_outage_opens_the_breaker_and_every_payment_is_fulfilled_once_after(
    live_client,
):
    with SandboxServer() as sandbox:
        provider = PaymentProvider(
            dataclasses.replace(settings, stripe_api_base=sandbox.base), services.telemetry
        )
        payment_ids = seed(provider, 50)
        env = {
            "STRIPE_API_BASE": sandbox.base,
            "STRIPE_BREAKER_FAIL_MAX": "3",
            "STRIPE_BREAKER_RESET_SECONDS": "1",
            "CELERY_RETRY_BACKOFF": "1",
            "PROVIDER_RETRY_BACKOFF_MAX": "4",
        }
        sandbox.set_mode("error")  # every API call answers 500
        with celery_worker(env=env) as worker:
            confirm_all(live_client, payment_ids)
            worker.wait_for_log("circuit breaker closed -> open", timeout=30)
            assert count(Purchase) == 0  # nothing granted while the provider is silent
            sandbox.set_mode("normal")
            wait_until(
                lambda: count(TutoringSession) == 50 * 7, 120, "not every payment was fulfilled"
            )
            assert "Retry in" in worker.log()
        assert count(Payment, Payment.status == "succeeded") == 50
        assert count(Purchase) == 50
        assert count(DeadLetter) == 0


def test_an_outage_longer_than_the_retries_parks_dead_letters_that_replay(live_client):
    with SandboxServer() as sandbox:
        provider = PaymentProvider(
            dataclasses.replace(settings, stripe_api_base=sandbox.base), services.telemetry
        )
        payment_ids = seed(provider, 3)
        env = {"STRIPE_API_BASE": sandbox.base, "STRIPE_BREAKER_RESET_SECONDS": "60"}
        sandbox.set_mode("error")
        with celery_worker(env=env):
            confirm_all(live_client, payment_ids)  # retries at once (tests): all spent
            wait_until(lambda: count(DeadLetter) == 3, 60, "no dead letters")
            assert count(Purchase) == 0
            letters = live_client.get("/api/v1/admin/dead-letters", headers=ADMIN).json["items"]
            assert {letter["task_name"] for letter in letters} == {
                "tutorflow.pipeline.verify_payment"
            }
            sandbox.set_mode("normal")
        # That worker's breaker stays open for a minute; the replays run on a fresh one.
        with celery_worker(env={"STRIPE_API_BASE": sandbox.base}):
            for letter in letters:
                replay = live_client.post(
                    f"/api/v1/admin/dead-letters/{letter['id']}/replay", headers=ADMIN
                )
                assert replay.status_code == 200
            wait_until(lambda: count(TutoringSession) == 3 * 7, 60, "the replays did not finish")
        assert count(Purchase) == 3


def test_a_held_lock_answers_503_within_the_lock_timeout(committed):
    app = create_app(dataclasses.replace(settings, api_lock_timeout_ms=300), testing=True)
    with open_session() as session, session.begin():
        payment_id = make_payment(session, make_student(session), make_course(session)).id
    holding, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with committed.connect() as connection, connection.begin():
            connection.execute(
                text("SELECT 1 FROM payments WHERE id = :id FOR UPDATE"), {"id": payment_id}
            )
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        response = app.test_client().post(
            f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN
        )
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"]
    assert waited < 5  # the lock timeout, not a gunicorn worker's 30 s kill
    with open_session() as session:
        assert session.get_one(Payment, payment_id).status == "pending"
