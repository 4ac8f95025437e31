"""Dead letters with a real worker: parked after the last retry, visible in Flower,
replayable to completion, never lost — even when the worker is SIGKILLed."""

from __future__ import annotations

import re
import uuid

import pytest
import requests
from kombu import Connection
from sqlalchemy import func, select

from actions import dead_letters
from celeryconfig import PARKED_QUEUE
from domain.payments import request_confirmation
from harness.brokers import queue_length
from harness.processes import FLOWER_AUTH as AUTH
from harness.processes import celery_worker, flower, wait_until
from models import Course, DeadLetter, Purchase, TutoringSession
from tasks.beat import settle_dead_letters
from tasks.dead_letters import park_in_queue, to_message
from tests.conftest import ADMIN, celery_app, open_session, settings
from tests.factories import (
    make_course,
    make_dead_letter,
    make_payment,
    make_student,
    make_trainer,
)
from tests.test_dead_letter_record import record

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


def flower_tasks(base: str, name: str) -> list[dict]:
    """Flower's record of the tasks called `name`, oldest first."""
    tasks = requests.get(
        f"{base}/api/tasks", params={"taskname": name}, auth=AUTH, timeout=5
    ).json()
    return sorted(tasks.values(), key=lambda t: t.get("received") or 0)


def failed(base: str, name: str, count: int) -> list[dict]:
    done = [t for t in flower_tasks(base, name) if t["state"] == "FAILURE"]
    return done if len(done) >= count else []


def flower_parked(base: str) -> int | None:
    """The dead_letter queue's length as Flower's Broker page and API count it."""
    queues = requests.get(f"{base}/api/queues/length", auth=AUTH, timeout=5).json()
    counts = {q["name"]: q.get("messages") for q in queues["active_queues"]}
    return counts.get(PARKED_QUEUE)


def parked() -> list[int]:
    """The letter ids of the messages parked in the dead_letter queue (read, then put
    back, as the broker allows: taken unacknowledged and requeued). Called once the
    queue is still: a settle running meanwhile would not see the messages held here."""
    ids = []
    with Connection(settings.broker_url) as connection, connection.channel() as channel:
        queue = celery_app.amqp.queues[PARKED_QUEUE](channel)
        queue.declare()
        held = []
        while (message := queue.get(no_ack=False, accept=["json"])) is not None:
            held.append(message)
            ids.append(message.decode()[1]["letter_id"])
        for message in held:
            message.requeue()
    return sorted(ids)


def timeline(live_client, payment_id: uuid.UUID) -> list[tuple[str, dict]]:
    detail = live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
    return [(e["type"], e["payload"]) for e in detail["timeline"]]


RECORD = "tutorflow.dead_letters.record"
SETTLE = "tutorflow.beat.settle_dead_letters"
INTAKE = "dead_letter_intake"
NO_TRAINER = "no trainer is free for this course and time yet"


def test_no_free_trainer_retries_five_times_then_parks_and_replays_to_the_end(live_client):
    payment_id, course_id = seed_payment_without_trainer()
    # Flower first: it shows only the task events it was there to receive.
    with flower() as base, celery_worker() as worker:
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
        # The timeline: each retry (attempt n of 6, why), then the dead letter.
        story = timeline(live_client, payment_id)
        retries = [p for t, p in story if t == "STEP_RETRYING"]
        assert [(r["step"], r["attempt"], r["attempts"]) for r in retries] == [
            ("allocate_trainer", n, 6) for n in range(1, 6)
        ]
        assert {r["reason"] for r in retries} == {NO_TRAINER}
        assert story[-1] == (
            "DEAD_LETTERED",
            {
                "dead_letter_id": letter["id"],
                "step": "allocate_trainer",
                "retries": 5,
                "reason": NO_TRAINER,
            },
        )

        # Flower: the letter is a failure (its record task's), whose message names the
        # letter, the failed task and why; its keyword arguments are a short summary.
        [record] = wait_or_fail(lambda: failed(base, RECORD, 1), "Flower missed the record")
        assert record["exception"] == (
            f"DeadLetterOpen('dead letter {letter['id']}: NoTrainerAvailable: "
            f"{letter['exception_message']} — allocate_trainer for payment {payment_id}. "
            f"1 dead letter open, oldest 0 min: ids {letter['id']}')"
        )
        assert record["kwargs"].endswith("}")
        assert letter["task_id"] in record["kwargs"]
        assert "traceback" not in record["kwargs"]

        # Flower lists the dead_letter queue, which no worker consumes, and counts the
        # open letter parked in it (RabbitMQ's management API refreshes every 5 s).
        wait_until(lambda: flower_parked(base) == 1, 30, "Flower never counted the letter")
        assert requests.get(f"{base}/api/queues/length", timeout=5).status_code == 401

        # A replay before the cause is fixed fails again: its letter points back.
        replay = live_client.post(f"{LETTERS}/{letter['id']}/replay", headers=ADMIN)
        assert replay.status_code == 200
        wait_until(open_letters, 60, "the failed replay was not parked")
        [again] = live_client.get(f"{LETTERS}?status=open", headers=ADMIN).json["items"]
        assert again["replay_of"] == letter["id"]
        assert again["task_id"] == replay.json["replay_task_id"]
        old = live_client.get(f"{LETTERS}/{letter['id']}", headers=ADMIN).json
        assert old["failed_again_as"] == [again["id"]]
        parked_again = timeline(live_client, payment_id)[-1]
        assert parked_again[0] == "DEAD_LETTERED"
        assert parked_again[1]["replay_of"] == letter["id"]
        assert parked_again[1]["replay_failed_again"] is True
        [_, second] = wait_or_fail(lambda: failed(base, RECORD, 2), "Flower missed it")
        assert (
            f"for payment {payment_id}, its replay of dead letter {letter['id']} failed again. "
            in second["exception"]
        )
        # The replayed letter's message left the queue (the settle the replay asked
        # for), the new one's is parked there.
        wait_until(lambda: re.search(rf"{SETTLE}\[\S+\] succeeded", worker.log()), 30, "no settle")
        wait_until(lambda: queue_length(settings.broker_url, PARKED_QUEUE) == 1, 30, "no letter")
        assert parked() == [again["id"]]

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
        replay = live_client.post(f"{LETTERS}/{again['id']}/replay", headers=ADMIN)
        assert replay.status_code == 200
        wait_until(lambda: sessions_of(payment_id) == 7, 30, "replay did not finish the chain")
        repeat = live_client.post(f"{LETTERS}/{again['id']}/replay", headers=ADMIN)
        assert repeat.status_code == 409
        wait_until(lambda: flower_parked(base) == 0, 30, "Flower still counts a letter")

    detail = live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "scheduled"
    assert detail["fulfilment"]["sessions_scheduled"] == 7
    assert open_letters() == []
    replays = [
        p["dead_letter_id"]
        for t, p in timeline(live_client, payment_id)
        if t == "DEAD_LETTER_REPLAYED"
    ]
    assert replays == [letter["id"], again["id"]]


def wait_or_fail(probe, message: str, timeout: float = 30):
    """wait_until, returning what the probe found."""
    found: list = []
    wait_until(lambda: found.append(probe()) or found[-1], timeout, message)
    return found[-1]


def test_settling_parks_one_message_per_open_letter_and_takes_out_the_rest(committed):
    """What a replay or discard asks for (and beat, every minute): the queue rebuilt
    from PostgreSQL. A duplicate and a resolved letter's message go; a missing one is
    parked; a letter an older release left there for its consumer is recorded."""
    with open_session() as session, session.begin():
        first, second = make_dead_letter(session).id, make_dead_letter(session).id
        resolved = make_dead_letter(session, status="replayed").id
    for letter_id in (first, first, resolved):  # second's message missing
        park_in_queue(celery_app, letter_id)
    old_release = to_message(record(run_id="parked-by-the-release-before"))
    celery_app.signature(RECORD, kwargs=old_release).apply_async(
        queue=PARKED_QUEUE,
        routing_key=PARKED_QUEUE,  # that release's route
    )
    assert queue_length(settings.broker_url, PARKED_QUEUE) == 4

    assert settle_dead_letters.apply().get() == {"parked": 3, "taken_out": 4, "recorded": 1}
    [third] = [letter.id for letter in open_letters() if letter.id not in (first, second)]
    assert parked() == [first, second, third]
    assert settle_dead_letters.apply().get() == {"parked": 3, "taken_out": 3, "recorded": 0}
    assert parked() == [first, second, third]


def test_a_dead_letter_survives_a_sigkill_of_the_worker_right_after_the_failure(committed):
    payment_id, _ = seed_payment_without_trainer()
    # Not the intake queue: the dead-letter message waits in the broker, unrecorded.
    with celery_worker(queues="pipeline,provider") as worker:
        with open_session() as session, session.begin():  # published after commit
            request_confirmation(session, payment_id, student_id=None, source="test")
        wait_until(
            lambda: queue_length(settings.broker_url, INTAKE) == 1,
            60,
            "no dead-letter message",
        )
        worker.kill()  # SIGKILL the whole worker, main process and pool
    assert open_letters() == []

    with celery_worker(queues=f"{INTAKE},maintenance"):
        wait_until(open_letters, 30, "the dead letter was lost with the worker")
        [letter] = open_letters()
        assert letter.task_name == "tutorflow.pipeline.allocate_trainer"
        assert letter.correlation_id == str(payment_id)
        wait_until(lambda: queue_length(settings.broker_url, PARKED_QUEUE), 30, "not parked")
        assert parked() == [letter.id]
        # Discarded: its message leaves the queue (the settle the discard asked for).
        dead_letters.discard(celery_app.database, letter.id)
        wait_until(
            lambda: queue_length(settings.broker_url, PARKED_QUEUE) == 0,
            30,
            "the discarded letter stayed parked",
        )


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


def test_the_state_says_retrying_while_a_step_waits_to_retry(live_client):
    payment_id, course_id = seed_payment_without_trainer()
    # Backoff without jitter: the first retry waits 4 s, time enough to look.
    slow_retries = {"CELERY_RETRY_BACKOFF": "4", "CELERY_RETRY_JITTER": "0"}

    def state() -> str:
        detail = live_client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
        return detail["fulfilment"]["state"]

    with celery_worker(env=slow_retries):
        confirmed = live_client.post(
            f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN
        )
        assert confirmed.status_code == 202
        wait_until(lambda: state() == "retrying", 30, "the state never said retrying")
        story = timeline(live_client, payment_id)
        assert story[-1] == (
            "STEP_RETRYING",
            {"step": "allocate_trainer", "attempt": 1, "attempts": 6, "reason": NO_TRAINER},
        )
        # A trainer arrives while the step waits: its retry succeeds, the state moves on.
        with open_session() as session, session.begin():
            make_trainer(session, [session.get_one(Course, course_id)])
        wait_until(lambda: state() == "scheduled", 60, "the retry never scheduled sessions")
    assert open_letters() == []


def test_an_attempt_that_fails_after_its_retry_was_published_is_not_dead_lettered(
    committed, redis_client
):
    """The retry runs to the end; the first attempt's late failure (a soft time limit
    striking while Celery handled the retry) parks nothing: no dead letter, no message on
    the dead_letter queue. Checked once that attempt's on_failure has said so."""
    from tests.worker_tasks import DONE_KEY, step

    correlation_id = uuid.uuid4().hex
    with celery_worker(queues="pipeline", include=("tests.worker_tasks",)) as worker:
        step.apply_async(kwargs={"correlation_id": correlation_id})
        wait_until(
            lambda: redis_client.get(DONE_KEY.format(correlation_id=correlation_id)),
            30,
            "the retry never ran",
        )
        wait_until(
            lambda: "failed after its retry was published" in worker.log(),
            30,
            "the first attempt's late failure was never handled",
        )
        log = worker.log()
    assert "SoftTimeLimitExceeded" in log  # the late failure did happen
    assert "dead-lettering" not in log
    assert queue_length(settings.broker_url, INTAKE, PARKED_QUEUE) == 0
    assert open_letters() == []
