"""RabbitMQ as the broker: what differs from Redis. The settings for each broker (no
broker needed), and, under `make test-rabbitmq`, a real worker: every queue a durable
quorum queue, and a retry's countdown waiting in RabbitMQ, not unacked in a worker."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from celeryconfig import QUEUES, UnsafeDeliverySettings, celery_config, poison_policy
from core.config import Settings
from domain.payments import request_confirmation
from harness.brokers import delayed_messages, is_rabbitmq
from harness.processes import celery_worker, wait_until
from models import Course, TutoringSession
from tests.conftest import open_session, settings
from tests.factories import make_course, make_payment, make_student, make_trainer

on_rabbitmq = pytest.mark.skipif(
    not is_rabbitmq(settings.broker_url), reason="RabbitMQ only: make test-rabbitmq"
)


def _config(broker_url: str, **environ: str) -> dict:
    return celery_config(Settings.from_env({"BROKER_URL": broker_url, **environ}))


def test_rabbitmq_gets_quorum_queues_on_topic_exchanges_and_redis_keeps_its_own():
    rabbit = _config("amqp://guest:guest@127.0.0.1:5672/tutorflow")
    assert [q.name for q in rabbit["task_queues"]] == list(QUEUES)
    for queue in rabbit["task_queues"]:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.durable
        # Native delayed delivery binds topic exchanges only.
        assert queue.exchange.type == "topic"
    assert rabbit["broker_transport_options"] == {"confirm_publish": True}
    assert rabbit["task_acks_late"] and rabbit["task_reject_on_worker_lost"]

    redis_config = _config("redis://127.0.0.1:6379/0")
    assert {q.exchange.type for q in redis_config["task_queues"]} == {"direct"}
    assert not any(q.queue_arguments for q in redis_config["task_queues"])
    assert redis_config["broker_transport_options"]["visibility_timeout"] == 300


def test_rabbitmq_checks_the_time_limit_against_its_consumer_timeout_not_a_visibility():
    # No visibility timeout on RabbitMQ: a retry's countdown waits in the broker.
    _config("amqp://x//", CELERY_VISIBILITY_TIMEOUT="10", PROVIDER_RETRY_BACKOFF_MAX="600")
    with pytest.raises(UnsafeDeliverySettings, match="consumer_timeout"):
        _config("amqp://x//", CELERY_TASK_TIME_LIMIT="1800")


def test_rabbitmq_bounds_poison_messages_by_a_policy_on_the_step_queues():
    """A policy, not queue arguments (those of an existing queue cannot change): each
    step queue hands a message out POISON_WORKER_LOSSES times, then dead-letters it, at
    least once, to `poisoned`; the dead_letter queue's own messages are letters."""
    policy = poison_policy(Settings.from_env({"BROKER_URL": "amqp://x//"}))
    assert policy["pattern"] == "^(pipeline|provider|maintenance|notifications)$"
    assert policy["apply-to"] == "queues"
    assert policy["definition"] == {
        "delivery-limit": 2,  # 3 deliveries, 3 workers lost: the default bound
        "dead-letter-exchange": "poisoned",
        "dead-letter-strategy": "at-least-once",
        "overflow": "reject-publish",
    }
    five = Settings.from_env({"BROKER_URL": "amqp://x//", "POISON_WORKER_LOSSES": "5"})
    assert poison_policy(five)["definition"]["delivery-limit"] == 4
    assert five.rabbitmq_management_url == "http://x:15672"
    assert _config("amqp://x//")["task_queues"][0].queue_arguments == {"x-queue-type": "quorum"}


def _management_queues() -> dict[str, dict]:
    """The queues of the test run's vhost, from RabbitMQ's management API."""
    url = urlsplit(settings.broker_url)
    vhost = quote(url.path[1:] or "/", safe="")
    response = requests.get(
        f"http://{url.hostname}:15672/api/queues/{vhost}",
        auth=(url.username or "guest", url.password or "guest"),
        timeout=10,
    )
    response.raise_for_status()
    return {queue["name"]: queue for queue in response.json()}


@on_rabbitmq
@pytest.mark.worker
def test_a_worker_declares_every_queue_as_a_durable_quorum_queue(committed):
    limited = ("pipeline", "provider", "maintenance", "notifications")

    def policy_shown() -> bool:  # the management API's view lags a policy by seconds
        queues = _management_queues()
        return all(queues.get(name, {}).get("policy") == "tutorflow-poison" for name in limited)

    with celery_worker(queues=",".join(QUEUES)):  # declares each (not only after other tests)
        wait_until(policy_shown, 30, "the poison policy never applied to the step queues")
        queues = _management_queues()
    for name in QUEUES:
        assert queues[name]["type"] == "quorum", name
        assert queues[name]["durable"], name
    # The delay levels of native delayed delivery: quorum queues too.
    assert queues["celery_delayed_0"]["type"] == "quorum"
    # The dead-letter worker set the poison policy and consumes what it dead-letters.
    assert queues["poisoned"]["type"] == "quorum"
    for name in limited:
        assert queues[name]["effective_policy_definition"]["delivery-limit"] == 2, name
    for name in ("dead_letter_intake", "dead_letter"):  # their messages are letters
        assert queues[name].get("policy") in (None, ""), name


@on_rabbitmq
@pytest.mark.worker
def test_a_retry_countdown_waits_in_rabbitmq_and_the_retry_then_finishes_the_chain(committed):
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        payment_id = make_payment(session, student, course).id
        course_id = course.id
    # No trainer yet: allocate_trainer retries after 5 s (no jitter), then 10 s.
    env = {"CELERY_RETRY_BACKOFF": "5", "CELERY_RETRY_JITTER": "0"}
    with celery_worker(env=env) as worker:
        with open_session() as session, session.begin():  # published after commit
            request_confirmation(session, payment_id, student_id=None, source="test")
        wait_until(
            lambda: delayed_messages(settings.broker_url) == 1,
            60,
            "the retry never waited in RabbitMQ's delay queues",
        )
        assert "will retry" in worker.log()
        with open_session() as session, session.begin():
            make_trainer(session, [session.get_one(Course, course_id)])

        def sessions() -> int:
            with open_session() as session:
                return session.scalar(select(func.count()).select_from(TutoringSession))

        wait_until(lambda: sessions() == 7, 90, "the delayed retry never finished the chain")
        assert delayed_messages(settings.broker_url) == 0
        assert "Direct exchanges are not supported" not in worker.log()
