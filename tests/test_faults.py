"""Invariants 1, 2 and 5 under real faults: pool children and whole workers SIGKILLed
mid-step, the broker stopped and restarted, PostgreSQL restarted mid-pipeline.

Every process here is started by the test and killed by its pid; the machine's shared
PostgreSQL, Redis and RabbitMQ are never stopped (private ones are started where a test
must). The broker is the test run's: Redis, or RabbitMQ under `make test-rabbitmq`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests
from sqlalchemy import create_engine, func, select, text

from domain.payments import request_confirmation
from harness.processes import (
    ROOT,
    api_server,
    celery_worker,
    private_broker,
    private_postgres,
    time_limit_env,
    wait_until,
)
from models import Allocation, OutboxMessage, ProcessedEvent, Purchase, Trainer, TutoringSession
from tests.conftest import ADMIN, open_session
from tests.factories import make_course, make_payment, make_student, make_trainer, pay

pytestmark = pytest.mark.worker
STEPS = [
    "tutorflow.pipeline.create_purchase",
    "tutorflow.pipeline.allocate_trainer",
    "tutorflow.pipeline.schedule_sessions",
]


def seed_payment() -> tuple[uuid.UUID, int]:
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        trainer = make_trainer(session, [course])
        return make_payment(session, student, course).id, trainer.id


def confirm_and_publish(payment_id: uuid.UUID) -> None:
    with open_session() as session, session.begin():
        # The after-commit channel publishes the chain.
        request_confirmation(session, payment_id, student_id=None, source="test")


def sessions_count() -> int:
    with open_session() as session:
        return session.scalar(select(func.count()).select_from(TutoringSession))


def pipeline_report() -> dict[str, object]:
    """Where each payment stands: printed when a fault test times out."""
    with open_session() as session:
        rows = session.execute(
            text(
                "SELECT p.status, pu.id IS NOT NULL, a.status, "
                "(SELECT count(*) FROM tutoring_sessions t WHERE t.allocation_id = a.id), "
                "(SELECT count(*) FROM dead_letters d WHERE d.correlation_id = p.id::text), "
                "(SELECT count(*) FROM domain_events e WHERE e.correlation_id = p.id "
                " AND e.event_type = 'PIPELINE_RESUMED'), o.published_at IS NOT NULL "
                "FROM payments p LEFT JOIN student_course_purchases pu ON pu.payment_id = p.id "
                "LEFT JOIN trainer_allocations a ON a.purchase_id = pu.id "
                "LEFT JOIN outbox o ON o.correlation_id = p.id"
            )
        ).all()
    summary: dict[str, int] = {}
    for row in rows:
        key = "status={} purchase={} allocation={} sessions={} letters={} resumed={} out={}".format(
            *row
        )
        summary[key] = summary.get(key, 0) + 1
    return summary


def wait_for_sessions(total: int, timeout: float) -> None:
    try:
        wait_until(lambda: sessions_count() == total, timeout, "payments were lost")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {pipeline_report()}") from None


def unpublished_outbox_rows() -> int:
    with open_session() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
            )
            or 0
        )


def assert_fulfilled_exactly_once(trainer_id: int) -> None:
    with open_session() as session:
        counts = [
            session.scalar(select(func.count()).select_from(model))
            for model in (Purchase, Allocation, TutoringSession, ProcessedEvent)
        ]
        assert counts == [1, 1, 7, 3]
        assert session.get_one(Trainer, trainer_id).active_students == 1


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.rsplit(".", 1)[1])
def test_a_pool_child_killed_mid_step_is_redone_exactly_once(committed, step):
    payment_id, trainer_id = seed_payment()
    env = {"FAULT_PAUSE_STEP": step, "FAULT_PAUSE_SECONDS": "60"}
    with celery_worker(env=env) as worker:
        confirm_and_publish(payment_id)
        worker.wait_for_log("fault pause pid=", timeout=30)
        pid = int(re.search(r"fault pause pid=(\d+)", worker.log()).group(1))
        os.kill(pid, signal.SIGKILL)  # the child dies with its transaction open
        wait_until(lambda: sessions_count() == 7, 60, "the step was not redone")
        assert "WorkerLostError" in worker.log() or "exited with" in worker.log()
    assert_fulfilled_exactly_once(trainer_id)


@pytest.mark.slow
def test_a_whole_worker_killed_mid_step_is_redelivered_to_the_next_worker(committed):
    payment_id, trainer_id = seed_payment()
    pause = {"FAULT_PAUSE_STEP": STEPS[2], "FAULT_PAUSE_SECONDS": "60"}
    with celery_worker(env=pause) as worker:
        confirm_and_publish(payment_id)
        worker.wait_for_log("fault pause pid=", timeout=30)
        worker.kill()  # SIGKILL main process and pool: nobody acks or requeues
    assert sessions_count() == 0
    started = time.monotonic()
    # Redis: the new worker restores the unacked message once it is older than its
    # visibility timeout (shortened here from the production 300 s; the startup check
    # wants it above the task time limit: 2 s is plenty here). RabbitMQ requeued it
    # when the dead worker's connection closed.
    with celery_worker(env={"CELERY_VISIBILITY_TIMEOUT": "3", **time_limit_env(2)}):
        wait_until(lambda: sessions_count() == 7, 60, "the message was never redelivered")
    print(f"\nrecovered {time.monotonic() - started:.1f} s after the restart")
    assert_fulfilled_exactly_once(trainer_id)


def _seed_over_http(api: str, payments: int) -> list[str]:
    course = requests.post(
        f"{api}/api/v1/courses", json={"title": "Fault"}, headers=ADMIN, timeout=10
    ).json()
    # Twelve hour-long sessions fill a trainer's default day (08:00 to 20:00).
    for _ in range(-(-payments // 12)):
        requests.post(
            f"{api}/api/v1/trainers",
            json={
                "name": "T",
                "email": f"t{uuid.uuid4().hex}@x.io",
                "max_students": 100,
                "course_ids": [course["id"]],
            },
            headers=ADMIN,
            timeout=10,
        )
    ids = []
    for n in range(payments):
        student = requests.post(
            f"{api}/api/v1/students",
            json={"name": f"S{n}", "email": f"s{n}-{uuid.uuid4().hex}@x.io", "timezone": "UTC"},
            headers=ADMIN,
            timeout=10,
        ).json()
        payment = requests.post(
            f"{api}/api/v1/payments",
            json={
                "student_id": student["id"],
                "course_id": course["id"],
                "tier": 10,
                "time_slot": f"{8 + n % 12:02d}:00",
            },
            headers=ADMIN,
            timeout=10,
        ).json()
        pay(payment["provider_payment_id"])  # the student pays with the provider's SDK
        ids.append(payment["id"])
    return ids


def _confirm(api: str, payment_id: str) -> int:
    return requests.post(
        f"{api}/api/v1/payments/{payment_id}/confirm",
        json={},
        headers={"Authorization": "Bearer test-admin-token"},
        timeout=10,
    ).status_code


def test_broker_down_confirm_still_answers_and_nothing_is_lost(committed):
    with private_broker() as broker:
        env = {
            **broker.env,
            "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
            "OUTBOX_RELAY_GRACE_SECONDS": "0",
        }
        with api_server(env) as api:
            payment_ids = _seed_over_http(api.base, 5)
            broker.stop()
            assert [_confirm(api.base, p) for p in payment_ids] == [202] * 5
            assert requests.get(f"{api.base}/readyz", timeout=10).status_code == 503
            broker.start()
            assert requests.get(f"{api.base}/readyz", timeout=10).status_code == 200
            with celery_worker(env=env, beat=True):
                wait_for_sessions(35, 90)
                # The chain's last steps write outbox rows of their own (notifications,
                # refreshes) after the sessions commit: wait for the relay to hand them off.
                wait_until(
                    lambda: unpublished_outbox_rows() == 0, 30, "outbox rows were never published"
                )
    with open_session() as session:
        assert session.scalar(select(func.count()).select_from(Purchase)) == 5
        assert unpublished_outbox_rows() == 0


@pytest.mark.slow
def test_broker_restarted_mid_pipeline_loses_nothing(committed):
    # Redis with its append-only file; RabbitMQ's quorum queues are always on disk.
    with private_broker(aof=True) as broker:
        env = {
            **broker.env,
            "CELERY_VISIBILITY_TIMEOUT": "5",
            **time_limit_env(4),
            "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
            "OUTBOX_RELAY_GRACE_SECONDS": "2",
            "PIPELINE_STALL_SECONDS": "8",
        }
        with api_server(env) as api, celery_worker(env=env, beat=True, supervise=True):
            payment_ids = _seed_over_http(api.base, 20)
            for n, payment_id in enumerate(payment_ids):
                if n == 10:
                    broker.restart()  # messages queued and unacked survive on disk
                assert _confirm(api.base, payment_id) == 202
            # Queued and unacked messages survive the restart; a chain link whose publish
            # failed while the broker was down is resumed by the stalled-pipeline sweep.
            wait_for_sessions(140, 120)
    with open_session() as session:
        assert session.scalar(select(func.count()).select_from(Allocation)) == 20
        duplicates = session.scalar(
            text(
                "SELECT count(*) FROM (SELECT allocation_id, scheduled_date FROM "
                "tutoring_sessions GROUP BY 1, 2 HAVING count(*) > 1) d"
            )
        )
        assert duplicates == 0


def _ensure_db(env: dict[str, str]) -> None:
    """The private server's database, migrated as an operator would (flask ensure-db)."""
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "ensure-db"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


@pytest.mark.slow
def test_postgres_restarted_mid_pipeline_steps_retry_and_finish(committed):
    with private_postgres() as database:
        env = {
            "DATABASE_URL": database.url,
            "CELERY_RETRY_BACKOFF": "1",
            "CELERY_RETRY_JITTER": "0",
            "FAULT_PAUSE_STEP": STEPS[1],
            "FAULT_PAUSE_SECONDS": "3",
        }
        _ensure_db(env)
        with api_server(env) as api, celery_worker(env=env) as worker:
            payment_ids = _seed_over_http(api.base, 5)
            assert [_confirm(api.base, p) for p in payment_ids] == [202] * 5
            worker.wait_for_log("fault pause pid=", timeout=30)
            database.stop()  # the paused transaction and every pooled connection die
            assert requests.get(f"{api.base}/readyz", timeout=10).status_code == 503
            database.start()
            wait_until(
                lambda: requests.get(f"{api.base}/readyz", timeout=10).status_code == 200,
                30,
                "the API did not become ready again",
            )
            engine = create_engine(database.url)

            def fulfilled() -> int:
                with engine.connect() as connection:
                    return connection.scalar(text("SELECT count(*) FROM tutoring_sessions"))

            wait_until(lambda: fulfilled() == 35, 90, "steps did not finish after the restart")
            assert "will retry" in worker.log()
            with engine.connect() as connection:
                assert connection.scalar(text("SELECT count(*) FROM dead_letters")) == 0
            engine.dispose()


@pytest.mark.slow
def test_a_database_outage_longer_than_a_steps_retries_is_ridden_out(committed):
    """create_purchase has 3 retries: with a 1 s backoff and no jitter they are spent
    about 7 s into an outage, and its failure would be a dead letter. A database that is
    unreachable (a failover, here a stop of 25 s) does not spend them: the step retries
    until DB_OUTAGE_RETRY_SECONDS after its first failure, and every payment finishes."""
    with private_postgres() as database:
        env = {
            "DATABASE_URL": database.url,
            "CELERY_RETRY_BACKOFF": "1",
            "CELERY_RETRY_BACKOFF_MAX": "4",
            "CELERY_RETRY_JITTER": "0",
            "DB_OUTAGE_RETRY_SECONDS": "120",
            "FAULT_PAUSE_STEP": STEPS[0],
            "FAULT_PAUSE_SECONDS": "3",
        }
        _ensure_db(env)
        with api_server(env) as api, celery_worker(env=env) as worker:
            payment_ids = _seed_over_http(api.base, 3)
            assert [_confirm(api.base, p) for p in payment_ids] == [202] * 3
            worker.wait_for_log("fault pause pid=", timeout=30)
            database.stop()  # create_purchase's paused transaction dies with it
            time.sleep(25)  # the outage's length is the point: past the step's 3 retries
            database.start()
            engine = create_engine(database.url)

            def count(sql: str) -> int:
                with engine.connect() as connection:
                    return int(connection.scalar(text(sql)) or 0)

            wait_until(
                lambda: count("SELECT count(*) FROM tutoring_sessions") == 21,
                120,
                f"steps did not finish after the outage:\n{worker.log()[-3000:]}",
            )
            assert count("SELECT count(*) FROM dead_letters") == 0
            assert count("SELECT count(*) FROM student_course_purchases") == 3
            engine.dispose()
