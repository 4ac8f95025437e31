"""Races, for real: threads with their own connections, a real worker process.

Invariant 1: a payment confirmed any number of times, by any path, concurrently,
yields one purchase, one allocation and exactly the right sessions.
Invariant 4: a trainer is never over capacity.
"""

from __future__ import annotations

import threading
import time as time_module
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import time
from typing import Any

import pytest
from sqlalchemy import func, select

from domain import availability
from domain.errors import NoTrainerAvailable
from harness.processes import celery_worker, wait_until
from models import (
    Allocation,
    DomainEvent,
    Notification,
    OutboxMessage,
    Purchase,
    Trainer,
    TutoringSession,
)
from tasks.chains import fulfilment_chain
from tasks.pipeline import allocate_trainer, create_purchase, schedule_sessions
from tests.conftest import celery_app, open_session, student_auth
from tests.factories import make_course, make_payment, make_student, make_trainer
from tests.webhook_client import deliver, intent_succeeded


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at the same moment, each in its own thread; results or exceptions."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except Exception as exc:  # collected and asserted on by the caller
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def counts(*models) -> list[int]:
    with open_session() as session:
        return [session.scalar(select(func.count()).select_from(m)) for m in models]


@pytest.mark.worker
def test_twenty_concurrent_confirmations_by_api_and_webhook_fulfil_once(live_app):
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        make_trainer(session, [course])
        payment = make_payment(session, student, course, paid=True)
        payment_id, auth = payment.id, student_auth(student.id)
    event = intent_succeeded(payment)

    def confirm() -> int:
        response = live_app.test_client().post(
            f"/api/v1/payments/{payment_id}/confirm", json={}, headers=auth
        )
        return response.status_code

    def webhook() -> int:
        # Ten deliveries of ten distinct events, as Stripe may send after retries.
        return deliver(live_app.test_client(), {**event, "id": f"evt_{uuid.uuid4()}"}).status_code

    with celery_worker() as worker:
        statuses = race([confirm] * 10 + [webhook] * 10)
        assert statuses == [202] * 10 + [200] * 10
        wait_until(lambda: counts(TutoringSession) == [7], 30, "sessions never reached 7")

        # Publish the whole chain twice more: duplicate messages must change nothing.
        fulfilment_chain(celery_app, str(payment_id)).apply_async()
        fulfilment_chain(celery_app, str(payment_id)).apply_async()

        def three_chains_finished() -> bool:
            return worker.log().count("refresh_student_views[") >= 6  # received + succeeded

        wait_until(three_chains_finished, 30, "the duplicate chains never ran")

    # One hand-off, and the two notifications (student, trainer) with their one send:
    # the duplicate chains owed nobody a second e-mail.
    assert counts(Purchase, Allocation, TutoringSession, OutboxMessage, Notification) == [
        1,
        1,
        7,
        2,
        2,
    ]
    with open_session() as session:
        confirmed_events = session.scalar(
            select(func.count()).where(DomainEvent.event_type == "PAYMENT_CONFIRMATION_REQUESTED")
        )
        assert confirmed_events == 1
        assert session.scalar(select(Trainer.active_students)) == 1


def test_ten_concurrent_allocations_never_overfill_a_trainer(committed, monkeypatch):
    with open_session() as session, session.begin():
        course = make_course(session)
        trainer = make_trainer(session, [course], max_students=3)
        payment_ids = [
            str(
                make_payment(
                    session, make_student(session), course, slot=time(8 + h, 0), confirmed=True
                ).id
            )
            for h in range(10)
        ]  # different slots: only capacity can refuse
    # The purchases are made (and committed) first; only the allocations race.
    steps = [(pid, create_purchase.run(pid, correlation_id=pid)) for pid in payment_ids]

    # Widen the race: each thread pauses right after its re-check of the trainer, so
    # without the trainer's row lock all ten would pass it before anyone commits.
    loads = availability.trainer_loads

    def slow_recheck(session, course_id, **kwargs):
        result = loads(session, course_id, **kwargs)
        if kwargs.get("trainer_id") is not None:
            time_module.sleep(0.1)
        return result

    monkeypatch.setattr(availability, "trainer_loads", slow_recheck)
    results = race(
        [lambda p=p, pid=pid: allocate_trainer.run(p, correlation_id=pid) for pid, p in steps]
    )

    allocated = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, NoTrainerAvailable)]
    assert len(allocated) == 3, results
    assert len(refused) == 7, results
    assert counts(Allocation) == [3]
    with open_session() as session:
        assert session.get_one(Trainer, trainer.id).active_students == 3


def test_duplicate_deliveries_of_one_step_at_once_have_one_effect(committed):
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        make_trainer(session, [course])
        payment_id = str(make_payment(session, student, course, confirmed=True).id)

    results = race([lambda: create_purchase.run(payment_id, correlation_id=payment_id)] * 8)

    assert len(set(results)) == 1 and isinstance(results[0], int), results
    assert counts(Purchase) == [1]
    with open_session() as session:
        created = session.scalar(
            select(func.count()).where(DomainEvent.event_type == "PURCHASE_CREATED")
        )
    assert created == 1


def test_duplicate_schedules_at_once_book_the_window_and_its_mail_once(committed):
    """Each duplicate runs its effect after the first committed (the allocation's lock
    orders them), then finds the inbox row and rolls back."""
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        make_trainer(session, [course])
        payment_id = str(make_payment(session, student, course, confirmed=True).id)
    purchase_id = create_purchase.run(payment_id, correlation_id=payment_id)
    allocation_id = allocate_trainer.run(purchase_id, correlation_id=payment_id)

    results = race([lambda: schedule_sessions.run(allocation_id, correlation_id=payment_id)] * 6)

    assert results == [student.id] * 6, results
    assert counts(TutoringSession, Notification) == [7, 2]
    with open_session() as session:
        generated = session.scalar(
            select(func.count()).where(DomainEvent.event_type == "SESSIONS_GENERATED")
        )
        sends = session.scalar(
            select(func.count()).where(OutboxMessage.kind == "send_notification")
        )
    assert (generated, sends) == (1, 1)
