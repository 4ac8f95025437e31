"""A poison message is caught (issue 26): a step whose run kills the process running it
every time (SIGKILL, as an OOM kill or a segfault would: no exception, no on_failure)
costs POISON_WORKER_LOSSES pool processes, is then parked as a dead letter that says the
worker was lost that many times, and replays like any other — while the rest of the
queue flows and the worker keeps serving. On both brokers (Makefile's BROKER_TESTS):
Redis counts the redeliveries itself, RabbitMQ's quorum queues by their delivery limit.
The poison is harness/poison.py."""

from __future__ import annotations

import uuid

import pytest
import redis
from sqlalchemy import func, select

from domain.payments import request_confirmation
from harness.poison import KEY
from harness.processes import celery_worker, wait_until
from models import DeadLetter, Purchase, TutoringSession
from tests.conftest import ADMIN, open_session, settings
from tests.factories import make_course, make_payment, make_student, make_trainer
from tests.test_faults import pipeline_report

pytestmark = pytest.mark.worker
GOOD = 50
POISONED_STEP = "tutorflow.pipeline.create_purchase"
LOSSES = settings.poison_worker_losses  # the default: 3
KILLED = "poison kill pid="
# billiard's line for a pool process that died by a signal and was replaced.
CHILD_DIED = "exited with 'signal 9 (SIGKILL)'"


def seed(payments: int) -> list[uuid.UUID]:
    """Paid payments of one course, a trainer for each."""
    with open_session() as session, session.begin():
        course = make_course(session)
        ids = []
        for _ in range(payments):
            make_trainer(session, [course])
            ids.append(make_payment(session, make_student(session), course).id)
        return ids


def sessions_of(payment_ids: list[uuid.UUID]) -> int:
    with open_session() as session:
        return session.scalar(
            select(func.count())
            .select_from(TutoringSession)
            .join(Purchase, Purchase.student_id == TutoringSession.student_id)
            .where(Purchase.payment_id.in_(payment_ids))
        )


def letters_of(payment_id: uuid.UUID) -> list[DeadLetter]:
    with open_session() as session:
        return list(
            session.scalars(select(DeadLetter).where(DeadLetter.correlation_id == str(payment_id)))
        )


def test_a_poison_message_costs_the_bounded_workers_is_parked_and_replays(
    live_client, redis_client: redis.Redis
):
    good = seed(GOOD)
    [poison] = seed(1)
    redis_client.set(KEY.format(correlation_id=poison), 1000)  # it kills every time
    with celery_worker(env={"POISON_STEP": POISONED_STEP}) as worker:
        with open_session() as session, session.begin():  # published after the commit
            for payment_id in [*good[: GOOD // 2], poison, *good[GOOD // 2 :]]:
                request_confirmation(session, payment_id, student_id=None, source="test")

        try:
            wait_until(lambda: letters_of(poison), 120, "the poison message was never parked")
            wait_until(lambda: sessions_of(good) == GOOD * 7, 120, "good payments were held up")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {pipeline_report()}\n{worker.log()[-3000:]}") from None

        [letter] = letters_of(poison)
        assert letter.task_name == POISONED_STEP
        assert letter.failure_kind == "worker_lost"
        assert letter.exception_type == "tasks.failures.WorkerLostRepeatedly"
        assert f"the worker running this step was lost {LOSSES} times" in letter.exception_message
        assert letter.status == "open"
        # Bounded: exactly that many pool processes were lost to it, each replaced, and
        # the worker itself never stopped (no crash loop: its pool served the 50).
        log = worker.log()
        assert log.count(KILLED) == LOSSES
        assert log.count(CHILD_DIED) == LOSSES
        assert worker.process.poll() is None and worker.restarts == 0
        assert sessions_of([poison]) == 0

        # The replay starts a new count: killed once more, it runs again and finishes
        # the chain (a count carried over would park it at once).
        redis_client.set(KEY.format(correlation_id=poison), 1)
        replay = live_client.post(f"/api/v1/admin/dead-letters/{letter.id}/replay", headers=ADMIN)
        assert replay.status_code == 200
        wait_until(lambda: sessions_of([poison]) == 7, 60, "the replay never finished the chain")
        assert worker.log().count(KILLED) == LOSSES + 1
    assert [(d.id, d.status) for d in letters_of(poison)] == [(letter.id, "replayed")]
    assert sessions_of(good) == GOOD * 7
