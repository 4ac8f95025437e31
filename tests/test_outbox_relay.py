"""A hand-off whose post-commit publish was lost is recovered by the beat relay, after
a real broker is stopped and started again (a private redis-server or RabbitMQ node of
the test, of the test run's kind)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.payments import request_confirmation
from harness.processes import celery_worker, private_broker, wait_until
from models import OutboxKind, OutboxMessage, TutoringSession
from tests.conftest import celery_app, open_session
from tests.factories import make_course, make_payment, make_student, make_trainer

pytestmark = pytest.mark.worker


def test_relay_publishes_a_lost_hand_off_once_the_broker_is_back(committed):
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        make_trainer(session, [course])
        payment_id = make_payment(session, student, course, paid=True).id

    with private_broker() as broker:
        env = {
            **broker.env,
            "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
            "OUTBOX_RELAY_GRACE_SECONDS": "0",
        }
        with celery_worker(env=env, beat=True) as worker:
            broker.stop()
            # Committed, never published: the process died right after its commit. (A
            # plain Session has no after-commit channel: nothing is published.)
            with Session(celery_app.database.engine) as session, session.begin():
                request_confirmation(session, payment_id, student_id=None, source="test")
            worker.wait_for_log("Cannot connect to", timeout=30)
            broker.start()

            def fulfilled() -> bool:
                with open_session() as session:
                    return session.scalar(select(func.count()).select_from(TutoringSession)) == 7

            wait_until(fulfilled, 90, "the relay never recovered the hand-off")

    with open_session() as session:
        # (The chain's notifications add send_notification rows of their own.)
        message = session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.START_PIPELINE)
        ).one()
        assert message.published_at is not None
