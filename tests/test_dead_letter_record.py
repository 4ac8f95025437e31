"""The dead letter as the domain keeps it — a typed record whose redelivery it stores
without reading — and as the workers write it: the kind of failure decided where the
error is caught, the message the dead_letter_intake queue carries (one of the release before
too), a redelivered failure updating its letter. Logic; with a real worker:
tests/test_dead_letters.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import kombu.exceptions
import pytest
import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from domain.dead_letters import DeadLetterRecord, store_dead_letter
from domain.errors import NoTrainerAvailable, PermanentStepError, TransientStepError
from domain.events import EventType
from domain.payments import NotSettledYet
from models import DeadLetter, DomainEvent, FailureKind, OutboxKind
from tasks.dead_letters import from_message, to_message
from tasks.failures import (
    WorkerLostRepeatedly,
    failure_kind,
    failure_kind_named,
    qualified_name,
)
from tasks.poison import poisoned_record
from tasks.redelivery import Redelivery
from tests.conftest import ADMIN
from tests.factories import make_course, make_payment, make_student

AT = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
# Each error the safe reasons knew by name before the kinds, with its kind.
KINDS = [
    (NoTrainerAvailable("no trainer free"), FailureKind.NO_TRAINER),
    (NotSettledYet("processing"), FailureKind.NOT_SETTLED),
    (TransientStepError("provider timeout"), FailureKind.SERVICE_UNAVAILABLE),
    (PermanentStepError("payment does not exist"), FailureKind.NEEDS_OPERATOR),
    (OperationalError("SELECT 1", {}, Exception("gone")), FailureKind.DATABASE_UNAVAILABLE),
    (IntegrityError("INSERT", {}, Exception("dup")), FailureKind.CONFLICT),
    (kombu.exceptions.OperationalError("down"), FailureKind.BROKER_UNAVAILABLE),
    (redis.exceptions.ConnectionError("refused"), FailureKind.BROKER_UNAVAILABLE),
    (redis.exceptions.TimeoutError("slow"), FailureKind.BROKER_UNAVAILABLE),
    (SoftTimeLimitExceeded(), FailureKind.TOO_SLOW),
    (WorkerLostRepeatedly(3), FailureKind.WORKER_LOST),
    (KeyError("x"), FailureKind.UNEXPECTED),
]


@pytest.mark.parametrize(("error", "kind"), KINDS, ids=lambda v: type(v).__name__)
def test_the_kind_of_each_error_and_of_its_name_in_an_older_message(error, kind):
    assert failure_kind(error) == kind
    assert failure_kind_named(qualified_name(error)) == kind


def test_a_library_errors_subclass_is_not_taken_for_it_nor_is_no_error():
    # As the reasons were looked up by the class's own name: a subclass may mean more.
    assert failure_kind(redis.exceptions.BusyLoadingError("loading")) == FailureKind.UNEXPECTED
    assert failure_kind(None) == FailureKind.UNEXPECTED


def test_a_message_rabbitmq_dead_lettered_at_its_delivery_limit_becomes_a_worker_lost_letter():
    """The `poisoned` queue's message is the step's own Celery message (protocol 2) with
    RabbitMQ's x-death header: the letter replays the step and the rest of its chain."""
    payment_id = str(uuid.uuid4())
    link = {"task": "tutorflow.pipeline.allocate_trainer", "kwargs": {}, "options": {}}
    headers = {
        "id": "run-1",
        "task": "tutorflow.pipeline.create_purchase",
        "retries": 1,
        "x_first_failed_at": "2026-11-20T09:00:00+00:00",
        "x-death": [{"reason": "delivery_limit", "queue": "pipeline", "count": 1}],
    }
    body = [[{"payment_id": payment_id}], {"correlation_id": payment_id}, {"chain": [link]}]
    letter = poisoned_record(headers, body, losses=3, now=AT)
    assert (letter.run_id, letter.step, letter.correlation_id) == (
        "run-1",
        "tutorflow.pipeline.create_purchase",
        payment_id,
    )
    assert letter.kind == FailureKind.WORKER_LOST
    assert letter.exception_type == "tasks.failures.WorkerLostRepeatedly"
    assert letter.exception_message.startswith("the worker running this step was lost 3 times")
    assert "'pipeline': delivery_limit" in letter.traceback
    assert letter.retries == 1
    assert (letter.first_failed_at, letter.last_failed_at) == (AT - timedelta(hours=1), AT)
    assert Redelivery.from_json(letter.redelivery) == Redelivery(
        "tutorflow.pipeline.create_purchase",
        [{"payment_id": payment_id}],
        {"correlation_id": payment_id},
        [link],
    )


def record(**overrides) -> DeadLetterRecord:
    payment_id = overrides.pop("correlation_id", str(uuid.uuid4()))
    values = {
        "run_id": str(uuid.uuid4()),
        "step": "tutorflow.pipeline.allocate_trainer",
        "correlation_id": payment_id,
        "kind": FailureKind.NO_TRAINER,
        "exception_type": "domain.errors.NoTrainerAvailable",
        "exception_message": "no trainer free for course 3 at 17:30",
        "traceback": "Traceback ...",
        "retries": 5,
        "first_failed_at": AT,
        "last_failed_at": AT + timedelta(minutes=2),
        "redelivery": Redelivery(
            task_name="tutorflow.pipeline.allocate_trainer",
            args=[payment_id],
            kwargs={"correlation_id": payment_id},
            chain=[{"task": "tutorflow.pipeline.schedule_sessions", "args": []}],
        ).to_json(),
    }
    return DeadLetterRecord(**{**values, **overrides})


def test_the_queue_message_carries_the_record_whole():
    letter = record()
    assert from_message(to_message(letter)) == letter
    assert letter.reason == "no trainer is free for this course and time yet"


def test_a_message_parked_by_the_release_before_is_recorded_alike():
    letter = record()
    older = {  # what tasks.dead_letters.park published before the record
        "task_name": letter.step,
        "exception_type": letter.exception_type,
        "exception_message": letter.exception_message,
        "correlation_id": letter.correlation_id,
        "task_id": letter.run_id,
        "args": letter.redelivery["args"],
        "kwargs": letter.redelivery["kwargs"],
        "chain": letter.redelivery["chain"],
        "traceback": letter.traceback,
        "retries": letter.retries,
        "first_failed_at": letter.first_failed_at.isoformat(),
        "last_failed_at": letter.last_failed_at.isoformat(),
    }
    assert from_message(older) == letter


def test_the_row_keeps_the_redelivery_as_given_and_the_kind_decides_the_state(client, db_session):
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course, confirmed=True)
    opaque = {"anything": ["the", "workers"], "wrote": {"n": 1}}
    stored = store_dead_letter(
        db_session,
        record(correlation_id=str(payment.id), redelivery=opaque, kind=FailureKind.CONFLICT),
    )
    assert stored.redelivery == opaque
    assert stored.failure_kind == FailureKind.CONFLICT
    detail = client.get(f"/api/v1/payments/{payment.id}", headers=ADMIN).json
    # A fault: an operator is needed. No trainer free (the same error otherwise) is not.
    assert detail["fulfilment"]["state"] == "needs_attention"
    assert detail["fulfilment"]["dead_letters"][0]["reason"] == (
        "a concurrent change got there first"
    )
    stored.failure_kind = FailureKind.NO_TRAINER
    db_session.flush()
    detail = client.get(f"/api/v1/payments/{payment.id}", headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "confirmed"


def test_a_redelivered_failure_of_the_same_run_updates_its_letter_once(db_session):
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course)
    first = record(correlation_id=str(payment.id), retries=4)
    store_dead_letter(db_session, first)
    again = record(
        run_id=first.run_id,
        correlation_id=str(payment.id),
        retries=5,
        kind=FailureKind.DATABASE_UNAVAILABLE,
        exception_type="sqlalchemy.exc.OperationalError",
        last_failed_at=first.last_failed_at + timedelta(minutes=1),
        redelivery={"not": "taken"},
    )
    stored = store_dead_letter(db_session, again)
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 1
    assert (stored.retries, stored.failure_kind, stored.exception_type) == (
        5,
        FailureKind.DATABASE_UNAVAILABLE,
        "sqlalchemy.exc.OperationalError",
    )
    assert (stored.first_failed_at, stored.last_failed_at) == (
        first.first_failed_at,
        again.last_failed_at,
    )
    assert stored.redelivery == first.redelivery  # the first failure's call, as parked
    parked = db_session.scalars(
        select(DomainEvent).where(DomainEvent.event_type == EventType.DEAD_LETTERED)
    ).all()
    assert [event.payload["reason"] for event in parked] == [
        "no trainer is free for this course and time yet"
    ]


@pytest.mark.parametrize("release", ["this", "before"])
def test_a_replay_runs_the_redelivery_under_the_run_id_the_letter_noted(db_session, eager, release):
    """The replay's outbox message as the domain writes it, and as the release before
    wrote it (the call's fields beside the run id): the same task, arguments and id."""
    from tasks.handoff import dispatch
    from tests.conftest import celery_app

    replay_dead_letter = dispatch(celery_app)[OutboxKind.REPLAY_DEAD_LETTER]

    celery_app.conf.task_eager_propagates = False  # fail as a worker would: park it
    missing, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    call = Redelivery(
        task_name="tutorflow.pipeline.create_purchase",
        args=[missing],
        kwargs={"correlation_id": missing},
    ).to_json()
    payload = (
        {"dead_letter_id": 1, "run_id": run_id, "redelivery": call}
        if release == "this"
        else {"dead_letter_id": 1, "task_id": run_id, **call}
    )
    replay_dead_letter(payload)
    # The payment does not exist: create_purchase failed for good, parked under that id.
    letter = db_session.scalars(select(DeadLetter)).one()
    assert (letter.task_id, letter.task_name, letter.correlation_id) == (
        run_id,
        "tutorflow.pipeline.create_purchase",
        missing,
    )
    assert letter.redelivery == call
