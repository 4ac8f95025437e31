"""Dead letters with a real worker: parked after the last retry, visible in Flower,
replayable to completion, never lost — even when the worker is SIGKILLed."""

from __future__ import annotations

import uuid

import pytest
import requests
from sqlalchemy import func, select

from domain.payments import request_confirmation
from harness.brokers import queue_length
from harness.processes import FLOWER_AUTH as AUTH
from harness.processes import celery_worker, flower, wait_until
from models import DeadLetter, Purchase, TutoringSession
from tests.conftest import ADMIN, open_session, settings
from tests.factories import make_course, make_payment, make_student

pytestmark = pytest.mark.worker
LETTERS = "/api/v1/admin/dead-letters"


def seed_payment_without_trainer() -> tuple[uuid.UUID, int]:
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        return make_payment(session, student, course).id, course.id


def open_letters() -> list[DeadLetter]:
    with open_session() as session:
        return list(session.scalars(select(DeadLetter).where(DeadLetter.status == "open")))


def sessions_of(payment_id: uuid.UUID) -> int:
    with open_session() as session:
        return session.scalar(
            select(func.count())
            .select_from(TutoringSession)
            .join(Purchase, Purchase.student_id == TutoringSession.student_id)
            .where(Purchase.payment_id == payment_id)
        )


def test_no_free_trainer_retries_five_times_then_parks_and_replays_to_the_end(live_client):
    payment_id, course_id = seed_payment_without_trainer()
    with celery_worker() as worker:
        confirmed = live_client.post(
            f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN
        )
        assert confirmed.status_code == 202
        wait_until(open_letters, 60, "no dead letter was recorded")

        [letter] = live_client.get(f"{LETTERS}?status=open", headers=ADMIN).json["items"]
        assert letter["task_name"] == "tutorflow.pipeline.allocate_trainer"
        assert letter["retries"] == 5
        assert letter["correlation_id"] == str(payment_id)
        assert letter["exception_type"] == "domain.errors.NoTrainerAvailable"
        assert "no trainer free" in letter["exception_message"]
        assert "NoTrainerAvailable" in letter["traceback"]
        assert letter["kwargs"] == {"correlation_id": str(payment_id)}
        assert [link["task"] for link in reversed(letter["chain"])] == [
            "tutorflow.pipeline.schedule_sessions",
            "tutorflow.pipeline.refresh_student_views",
        ]
        assert letter["first_failed_at"] < letter["last_failed_at"]
        assert worker.log().count("allocate_trainer[") >= 6  # first run + 5 retries
        detail = live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
        # No trainer free is no fault: the student reads that one is being found (an
        # operator still sees the letter; the give-up refund comes after 48 hours).
        assert detail["fulfilment"]["state"] == "finding_trainer"
        assert [d["id"] for d in detail["fulfilment"]["dead_letters"]] == [letter["id"]]

        # Flower lists the dead-letter queue (a worker consumes it) and the record task.
        with flower() as base:

            def flower_sees_dead_letter_queue() -> bool:
                queues = requests.get(f"{base}/api/queues/length", auth=AUTH, timeout=5).json()
                return "dead_letter" in {q["name"] for q in queues["active_queues"]}

            wait_until(flower_sees_dead_letter_queue, 30, "Flower never listed dead_letter")
            assert requests.get(f"{base}/api/queues/length", timeout=5).status_code == 401

        # The operator fixes the cause, then replays: the chain runs on to the end.
        trainer = live_client.post(
            "/api/v1/trainers",
            json={
                "name": "New",
                "email": "new@t.example",
                "max_students": 5,
                "course_ids": [course_id],
            },
            headers=ADMIN,
        )
        assert trainer.status_code == 201
        replay = live_client.post(f"{LETTERS}/{letter['id']}/replay", headers=ADMIN)
        assert replay.status_code == 200
        wait_until(lambda: sessions_of(payment_id) == 7, 30, "replay did not finish the chain")
        again = live_client.post(f"{LETTERS}/{letter['id']}/replay", headers=ADMIN)
        assert again.status_code == 409

    detail = live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "scheduled"
    assert detail["fulfilment"]["sessions_scheduled"] == 7
    assert open_letters() == []


def test_a_dead_letter_survives_a_sigkill_of_the_worker_right_after_the_failure(committed):
    payment_id, _ = seed_payment_without_trainer()
    # Only the pipeline queue: the dead-letter message waits in the broker, unrecorded.
    with celery_worker(queues="pipeline") as worker:
        with open_session() as session, session.begin():  # published after commit
            request_confirmation(session, payment_id, student_id=None, source="test")
        wait_until(
            lambda: queue_length(settings.broker_url, "dead_letter") == 1,
            60,
            "no dead-letter message",
        )
        worker.kill()  # SIGKILL the whole worker, main process and pool
    assert open_letters() == []

    with celery_worker(queues="dead_letter"):
        wait_until(open_letters, 30, "the dead letter was lost with the worker")
    [letter] = open_letters()
    assert letter.task_name == "tutorflow.pipeline.allocate_trainer"
    assert letter.correlation_id == str(payment_id)


def test_a_non_retryable_error_is_dead_lettered_at_once(committed):
    # Two checkouts of one course raced past the checkout check; both get confirmed.
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        first = make_payment(session, student, course)
        second = make_payment(session, student, course)
        first_id, second_id = first.id, second.id
    with celery_worker() as worker:
        for payment_id in (first_id, second_id):
            with open_session() as session, session.begin():  # published after commit
                request_confirmation(session, payment_id, student_id=None, source="t")
        wait_until(open_letters, 30, "no dead letter")
        log = worker.log()
    letters = open_letters()
    purchase_letters = [d for d in letters if d.task_name.endswith("create_purchase")]
    assert len(purchase_letters) == 1
    [letter] = purchase_letters
    assert letter.retries == 0
    assert letter.exception_type == "domain.errors.PermanentStepError"
    assert "already has course" in letter.exception_message
    assert f"create_purchase[{letter.task_id}] retry" not in log.lower()
    with open_session() as session:
        assert session.scalar(select(func.count()).select_from(Purchase)) == 1
