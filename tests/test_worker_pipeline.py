"""A real worker: a payment confirmed over HTTP ends with 7 sessions on the calendar."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select, text

from domain.errors import safe_reason
from domain.events import EventType
from harness.processes import celery_worker, provider_worker, time_limit_env, wait_until
from models import DeadLetter, DomainEvent, FailureKind
from tests.conftest import ADMIN, SANDBOX, open_session
from tests.factories import make_course, make_payment, make_student, make_trainer

pytestmark = pytest.mark.worker


def seed_payment():
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        trainer = make_trainer(session, [course])
        payment = make_payment(session, student, course)
        return payment.id, trainer.id


def test_confirm_over_http_schedules_seven_sessions(live_client):
    payment_id, _ = seed_payment()
    with celery_worker():
        started = time.monotonic()
        response = live_client.post(
            f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN
        )
        assert response.status_code == 202

        def scheduled() -> bool:
            detail = live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
            return detail["fulfilment"]["sessions_scheduled"] == 7

        wait_until(scheduled, 30, "the payment never got its 7 sessions")
        print(f"\nconfirm → 7 sessions visible: {time.monotonic() - started:.3f} s")

    detail = live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "scheduled"
    assert len(detail["fulfilment"]["upcoming_sessions"]) == 7
    assert [e["type"] for e in detail["timeline"]] == [
        "PAYMENT_CONFIRMATION_REQUESTED",
        "PAYMENT_VERIFIED",
        "PURCHASE_CREATED",
        "TRAINER_ALLOCATED",
        "SESSIONS_GENERATED",
    ]


def test_the_provider_worker_waits_on_a_slow_provider_for_many_payments_at_once(live_client):
    """The real provider answers in 100-300 ms. The provider queue's thread-pool worker
    (as the Procfile runs it) waits for several payments at once, where a pipeline
    process would wait for one: with every call taking 1 s, the sandbox sees the calls
    for eight payments overlap, and each payment gets its sessions from the pipeline's
    worker meanwhile."""
    payments = [seed_payment()[0] for _ in range(8)]
    SANDBOX.set_mode("slow", 1.0)
    try:
        with (
            provider_worker(),
            celery_worker(queues="pipeline,maintenance"),
        ):
            for payment_id in payments:
                answer = live_client.post(
                    f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN
                )
                assert answer.status_code == 202

            def all_scheduled() -> bool:
                return all(
                    live_client.get(f"/api/v1/payments/{p}", headers=ADMIN).json["fulfilment"][
                        "sessions_scheduled"
                    ]
                    == 7
                    for p in payments
                )

            wait_until(all_scheduled, 60, "not every payment got its 7 sessions")
        most = SANDBOX.state()["most_calls_at_once"]
    finally:
        SANDBOX.set_mode("normal")
    assert most >= 4, f"at most {most} provider calls at once: the verify steps queued"


def test_the_worker_applies_its_own_time_limits_whoever_sent_the_task(redis_client):
    """This process sends with the default limits (120 s, soft 110 s); the worker runs
    with 4 s (soft 3 s), and its limit is the one that strikes: Celery 5.7 writes the
    sender's limits into each message, which tasks.celery_app drops for the defaults."""
    from tests.worker_tasks import DONE_KEY, slow_step

    correlation_id = uuid.uuid4().hex
    with celery_worker(
        queues="pipeline",
        include=("tests.worker_tasks",),
        env=time_limit_env(4),
    ) as worker:
        slow_step.apply_async(kwargs={"correlation_id": correlation_id, "seconds": 12})
        wait_until(
            lambda: redis_client.get(DONE_KEY.format(correlation_id=correlation_id)),
            30,
            "the retry never finished",
        )
        log = worker.log()
    assert "Soft time limit (3s) exceeded for tests.worker_tasks.slow_step" in log
    assert "no time limit struck" not in log


def test_a_step_waiting_on_a_held_lock_retries_and_is_never_killed_at_the_time_limit(
    live_client,
):
    """A trainer's row held locked for longer than the task time limit (a worker cut off
    mid-transaction holds it until PostgreSQL ends that transaction): allocate's wait ends
    at the lock timeout, under the soft limit, and the step retries with backoff. It is
    never killed at the hard limit, whose redeliveries count as lost workers and would
    park a healthy step as a poison message. Nor do its retries run out while the lock
    lasts (the tests retry at once: six attempts of 1.5 s): like an unreachable database,
    a lock not granted rides on past max_retries for DB_OUTAGE_RETRY_SECONDS. Once the
    lock goes, the payment is served, with no dead letter."""
    payment_id, trainer_id = seed_payment()
    limits = time_limit_env(4)  # hard 4 s, soft 3 s, lock timeout 1.5 s
    with celery_worker(env=limits) as worker, open_session() as holder:
        with holder.begin():
            holder.execute(
                text("SELECT 1 FROM trainers WHERE id = :id FOR UPDATE"), {"id": trainer_id}
            )
            held_at = time.monotonic()
            answer = live_client.post(
                f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN
            )
            assert answer.status_code == 202
            # Held past the hard limit, and until allocate has given up on it more
            # times than its max_retries (5) allow.
            hard = int(limits["CELERY_TASK_TIME_LIMIT"])
            wait_until(
                lambda: (
                    len(_retries(payment_id, "allocate_trainer")) >= 7
                    and time.monotonic() - held_at > hard + 1
                ),
                60,
                "allocate stopped retrying on the held lock",
            )
        wait_until(
            lambda: (
                live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json["fulfilment"][
                    "sessions_scheduled"
                ]
                == 7
            ),
            60,
            "the payment was not served once the lock was released",
        )
        log = worker.log()
    assert "Hard time limit" not in log and "hard time limit" not in log, log[-3000:]
    # PostgreSQL's lock timeout is an OperationalError: retried as an unavailable database.
    unavailable = safe_reason(FailureKind.DATABASE_UNAVAILABLE)
    assert {r["reason"] for r in _retries(payment_id, "allocate_trainer")} == {unavailable}
    with open_session() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0


def _retries(payment_id: uuid.UUID, step: str) -> list[dict]:
    with open_session() as session:
        payloads = session.scalars(
            select(DomainEvent.payload).where(
                DomainEvent.correlation_id == payment_id,
                DomainEvent.event_type == EventType.STEP_RETRYING,
            )
        ).all()
    return [p for p in payloads if p["step"].endswith(step)]
