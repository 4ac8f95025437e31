"""Refunds: the compensating saga ends in the same state whatever the order."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

from domain.payments import request_confirmation
from domain.refunds import refund_payment
from harness.processes import celery_worker, wait_until
from models import (
    Allocation,
    DomainEvent,
    OutboxMessage,
    Purchase,
    Trainer,
    TutoringSession,
)
from tasks.chains import fulfilment_chain
from tests.conftest import ADMIN, SANDBOX, celery_app, open_session
from tests.factories import make_course, make_payment, make_student, make_trainer
from tests.webhook_client import charge_refunded, deliver


def nothing_active(session, payment_id: uuid.UUID, trainer_id: int) -> None:
    """The refund's promise: no active purchase, allocation or future session remains,
    and the trainer's place is free again."""
    session.expire_all()
    assert not session.scalar(
        select(func.count()).where(Purchase.payment_id == payment_id, Purchase.is_active)
    )
    assert not session.scalar(
        select(func.count())
        .select_from(Allocation)
        .join(Purchase, Purchase.id == Allocation.purchase_id)
        .where(Purchase.payment_id == payment_id, Allocation.status.in_(["approved", "active"]))
    )
    assert not session.scalar(select(func.count()).where(TutoringSession.status == "scheduled"))
    assert session.get_one(Trainer, trainer_id).active_students == 0


def events(session, payment_id) -> list[str]:
    return list(
        session.scalars(
            select(DomainEvent.event_type)
            .where(DomainEvent.correlation_id == payment_id)
            .order_by(DomainEvent.id)
        )
    )


@pytest.fixture
def scheduled(client, db_session, eager):
    student, course = make_student(db_session), make_course(db_session)
    trainer = make_trainer(db_session, [course], max_students=1)
    payment = make_payment(db_session, student, course, paid=True)
    client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=ADMIN)
    return payment, trainer


def test_refund_after_full_scheduling_undoes_everything(client, db_session, scheduled):
    payment, trainer = scheduled
    response = client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN)
    assert response.status_code == 202
    assert response.json["status"] == "refunded"
    nothing_active(db_session, payment.id, trainer.id)
    assert db_session.scalar(select(func.count()).where(TutoringSession.status == "cancelled")) == 7
    assert events(db_session, payment.id)[-5:] == [
        "PAYMENT_REFUNDED",
        "SESSIONS_CANCELLED",
        "ALLOCATION_ENDED",
        "PURCHASE_DEACTIVATED",
        "COMPENSATION_DONE",
    ]
    detail = client.get(f"/api/v1/payments/{payment.id}", headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "refunded"
    assert detail["timeline"][-1]["type"] == "COMPENSATION_DONE"


def test_refund_twice_does_nothing_twice(client, db_session, scheduled):
    payment, trainer = scheduled
    client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN)
    again = client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN)
    assert again.status_code == 202
    assert events(db_session, payment.id).count("COMPENSATION_DONE") == 1
    assert (
        db_session.scalar(select(func.count()).where(OutboxMessage.kind == "start_compensation"))
        == 1
    )
    nothing_active(db_session, payment.id, trainer.id)


def test_refund_by_webhook_and_its_redelivery(client, db_session, scheduled):
    payment, trainer = scheduled
    event = charge_refunded(payment, event_id="evt_refund")
    assert deliver(client, event).json["status"] == "refunded"
    assert deliver(client, event).json["duplicate"] is True
    nothing_active(db_session, payment.id, trainer.id)


def test_an_admin_refund_refunds_at_the_provider(client, db_session, scheduled):
    payment, _ = scheduled
    before = SANDBOX.state()["refunds"]
    assert client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN).status_code == 202
    assert client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN).status_code == 202
    assert SANDBOX.state()["refunds"] == before + 1  # once, whatever the repeats


def test_a_pending_payment_cannot_be_refunded(client, db_session):
    payment = make_payment(db_session, make_student(db_session), make_course(db_session))
    response = client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "payment_not_refundable"
    assert client.post(f"/api/v1/payments/{payment.id}/refund").status_code == 401


def test_refund_before_the_chain_starts_leaves_nothing_to_start(db_session, eager):
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course])
    payment = make_payment(db_session, make_student(db_session), course, confirmed=True)
    refund_payment(db_session, payment.id, source="test")
    db_session.flush()
    fulfilment_chain(celery_app, str(payment.id)).apply_async()  # the hand-off arrives late
    assert db_session.scalar(select(func.count()).select_from(Purchase)) == 0
    nothing_active(db_session, payment.id, trainer.id)


def test_refund_then_replay_of_an_old_dead_letter_recreates_nothing(client, db_session, eager):
    from models import DeadLetter
    from tests.factories import make_dead_letter

    course = make_course(db_session)
    trainer = make_trainer(db_session, [course])
    payment = make_payment(db_session, make_student(db_session), course, paid=True)
    client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=ADMIN)
    pid = str(payment.id)
    letter = make_dead_letter(db_session, correlation_id=pid)  # create_purchase(pid) again
    client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN)
    replay = client.post(f"/api/v1/admin/dead-letters/{letter.id}/replay", headers=ADMIN)
    assert replay.status_code == 200
    nothing_active(db_session, payment.id, trainer.id)
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 1


@pytest.mark.worker
@pytest.mark.parametrize(
    "step",
    ["create_purchase", "allocate_trainer", "schedule_sessions"],
)
def test_refund_racing_each_forward_step(committed, step):
    with open_session() as session, session.begin():
        course = make_course(session)
        trainer_id = make_trainer(session, [course], max_students=1).id
        payment_id = make_payment(session, make_student(session), course, paid=True).id
    env = {"FAULT_PAUSE_STEP": f"tutorflow.pipeline.{step}", "FAULT_PAUSE_SECONDS": "2"}
    with celery_worker(env=env) as worker:
        with open_session() as session, session.begin():
            request_confirmation(session, payment_id, student_id=None, source="test")
        worker.wait_for_log("fault pause pid=", timeout=30)
        # The step holds its transaction open; the refund lands in the middle of it.
        refunded = threading.Event()

        def refund() -> None:
            with open_session() as session, session.begin():
                refund_payment(session, payment_id, source="test")
            refunded.set()

        threading.Thread(target=refund).start()
        assert refunded.wait(30)

        def compensated() -> bool:
            with open_session() as session:
                return "COMPENSATION_DONE" in events(session, payment_id)

        wait_until(compensated, 30, "the compensation never ran")
        time.sleep(1)  # let any forward link still queued run (it must do nothing)
    with open_session() as session:
        nothing_active(session, payment_id, trainer_id)
        assert events(session, payment_id).count("COMPENSATION_DONE") == 1
