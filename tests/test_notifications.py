"""Notifications, against a real SMTP server (aiosmtpd, tests/smtp_sink.py): what is
sent when, to whom, with times in the reader's zone; never twice under redelivery;
retried while the server is down; and, with a real worker SIGKILLed between the
server's acceptance and the commit, the stated guarantee (at least once, same
Message-ID: docs/guarantees.md, "Notifications")."""

from __future__ import annotations

import os
import re
import signal
import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bootstrap import bootstrap
from core.config import Settings
from core.mail import SmtpServer
from domain import dead_letters, notifications
from domain.calendar import Shift, ShiftReason
from domain.notifications import Notice
from harness.processes import ALL_QUEUES, celery_worker, time_limit_env, wait_until
from models import (
    DeadLetter,
    Notification,
    NotificationKind,
    NotificationStatus,
    OutboxKind,
    OutboxMessage,
    Trainer,
    TutoringSession,
)
from tasks.beat import relay_outbox
from tasks.notifications import send_notification
from tests.conftest import ADMIN, open_session, student_auth
from tests.factories import make_course, make_payment, make_student, make_trainer
from tests.smtp_sink import SmtpSink, shared
from tests.test_faults import confirm_and_publish, seed_payment, sessions_count

SINK = shared()
MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WITH_MAIL = f"{ALL_QUEUES},notifications"


def rows(session, **where) -> list[Notification]:
    session.expire_all()
    query = select(Notification).filter_by(**where).order_by(Notification.id)
    return list(session.scalars(query))


@pytest.fixture
def booked(client, db_session, eager, clock):
    """A New York student's payment, confirmed and fulfilled eagerly, with a Tokyo
    trainer: the confirmation and the notice have been sent to the sink."""
    clock(MONDAY_NOON)
    student = make_student(db_session, timezone="America/New_York")
    course = make_course(db_session, title="Algebra")
    trainer = make_trainer(db_session, [course], timezone="Asia/Tokyo")
    payment = make_payment(db_session, student, course, slot=time(17, 0))
    answer = client.post(f"/api/v1/payments/{payment.id}/confirm", json={}, headers=ADMIN)
    assert answer.status_code == 202, answer.json
    return payment, student, trainer


def test_the_student_gets_one_confirmation_with_the_first_sessions_in_their_zone(
    db_session, booked
):
    payment, student, _ = booked
    [mail] = SINK.received(to=student.email)
    assert mail.message["To"] == student.email
    assert mail.message["Subject"] == "Your Algebra sessions are booked"
    # Monday 23 Nov, noon UTC: the first weekday slot is Tuesday 17:00 in New York.
    assert "  - Tuesday 24 November 2026, 17:00 (America/New_York)\n" in mail.body
    assert "  - Wednesday 2 December 2026, 17:00 (America/New_York)\n" in mail.body
    assert len(re.findall(r"^  - ", mail.body, re.MULTILINE)) == 7
    [row] = rows(db_session, recipient=student.email)
    assert (row.kind, row.status, row.attempts) == (NotificationKind.SESSIONS_BOOKED, "sent", 1)
    assert row.correlation_id == payment.id
    assert row.sent_at == MONDAY_NOON  # the application's clock, when the server took it
    assert mail.message_id == row.message_id


def test_the_trainer_gets_a_notice_of_the_new_student_in_the_trainers_zone(db_session, booked):
    _, student, trainer = booked
    [mail] = SINK.received(to=trainer.email)
    assert mail.message["Subject"] == f"New student for Algebra: {student.name}"
    assert f"{student.name} <{student.email}> joins you for Algebra" in mail.body
    # 17:00 in New York (UTC-5) is 07:00 the next morning in Tokyo (UTC+9).
    assert "  - Wednesday 25 November 2026, 07:00 (Asia/Tokyo)\n" in mail.body
    assert "America/New_York" not in mail.body


def test_redelivered_and_duplicated_sends_send_nothing_again(db_session, booked):
    _, student, _ = booked
    [row] = rows(db_session, recipient=student.email)
    for _ in range(3):  # a redelivery, a duplicate publish, a relay's re-publish
        result = send_notification.apply(args=[row.id], kwargs={"correlation_id": "x"}).get()
        assert result == []  # nothing left to send
    assert len(SINK.received(to=student.email)) == 1
    assert rows(db_session, recipient=student.email)[0].attempts == 1


def test_the_same_news_written_twice_is_owed_once(db_session, booked):
    payment, student, _ = booked
    before = db_session.scalar(
        select(func.count()).where(OutboxMessage.kind == OutboxKind.SEND_NOTIFICATION)
    )
    again = notifications.write(
        db_session,
        payment.id,
        [Notice(NotificationKind.SESSIONS_BOOKED, student.email, subject="again", body="again")],
    )
    db_session.flush()
    assert again == []
    after = db_session.scalar(
        select(func.count()).where(OutboxMessage.kind == OutboxKind.SEND_NOTIFICATION)
    )
    assert after == before == 1  # the booking's two e-mails: one message, nothing more


def test_a_bookings_two_emails_go_out_in_one_task_on_one_connection(db_session, booked):
    _, student, trainer = booked
    [message] = db_session.scalars(
        select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.SEND_NOTIFICATION)
    )
    ids = [row.id for row in rows(db_session)]
    assert len(ids) == 2 and message.payload["notification_ids"] == ids
    [to_student] = SINK.received(to=student.email)
    [to_trainer] = SINK.received(to=trainer.email)
    assert to_student.peer == to_trainer.peer  # the same client socket: one connection


def test_one_refused_recipient_fails_alone_and_the_letter_replays_only_it(
    client, db_session, eager
):
    kept = f"kept-{uuid.uuid4().hex[:12]}@test.example"
    payment_id = uuid.uuid4()
    ids = notifications.write(
        db_session,
        payment_id,
        [
            Notice(NotificationKind.SESSION_RESCHEDULED, "bounce@test.example", "s", "b"),
            Notice(NotificationKind.SESSION_RESCHEDULED, kept, "s", "b"),
        ],
    )
    db_session.flush()
    result = send_notification.apply(
        args=[ids], kwargs={"correlation_id": str(payment_id)}, throw=False
    )
    assert result.failed()
    refused, sent = rows(db_session, correlation_id=payment_id)
    assert (refused.status, sent.status) == (NotificationStatus.FAILED, NotificationStatus.SENT)
    # Recorded together: the refused one was never sent; the sent one carries no error.
    assert (refused.sent_at, sent.last_error) == (None, None)
    assert sent.sent_at is not None
    assert len(SINK.received(to=kept)) == 1
    letter = db_session.scalars(select(DeadLetter)).one()
    assert f"notification {ids[0]}" in letter.exception_message
    replay = client.post(f"/api/v1/admin/dead-letters/{letter.id}/replay", headers=ADMIN)
    assert replay.status_code == 200, replay.json
    # The refused one was tried again (and refused again); the sent one was not sent again.
    refused, sent = rows(db_session, id=ids[0]) + rows(db_session, id=ids[1])
    assert (refused.attempts, sent.attempts) == (2, 1)
    assert len(SINK.received(to=kept)) == 1


def test_a_reschedule_tells_student_and_trainer_in_their_own_zones(client, db_session, booked):
    _, student, trainer = booked
    session = db_session.scalars(
        select(TutoringSession).order_by(TutoringSession.starts_at).offset(2)
    ).first()
    # Thursday 26 Nov 17:00 New York (22:00 UTC) → Friday 27 Nov 09:00 New York.
    answer = client.post(
        f"/api/v1/sessions/{session.id}/reschedule",
        json={"starts_at": "2026-11-27T09:00:00-05:00"},
        headers=student_auth(student.id),
    )
    assert answer.status_code == 200, answer.json
    [to_student] = [m for m in SINK.received(to=student.email) if "moved" in m.body]
    assert (
        "on Thursday 26 November 2026, 17:00 (America/New_York) has moved to "
        "Friday 27 November 2026, 09:00 (America/New_York)"
    ) in to_student.body
    [to_trainer] = [m for m in SINK.received(to=trainer.email) if "moved" in m.body]
    assert (
        "on Friday 27 November 2026, 07:00 (Asia/Tokyo) has moved to "
        "Friday 27 November 2026, 23:00 (Asia/Tokyo)"
    ) in to_trainer.body


def test_a_refund_tells_the_student(client, db_session, booked):
    payment, student, _ = booked
    assert client.post(f"/api/v1/payments/{payment.id}/refund", headers=ADMIN).status_code == 202
    [mail] = [m for m in SINK.received(to=student.email) if "refunded" in m.body]
    assert mail.message["Subject"] == "Your payment was refunded"
    assert "7 upcoming session(s) were cancelled" in mail.body


def test_a_reallocation_tells_the_student_and_the_new_trainer(client, db_session, booked):
    _, student, old = booked
    course_id = db_session.scalar(select(Trainer).where(Trainer.id == old.id)).courses[0]
    new = make_trainer(db_session, [course_id], timezone="Europe/London")
    db_session.flush()
    answer = client.patch(f"/api/v1/trainers/{old.id}", json={"active": False}, headers=ADMIN)
    assert answer.status_code in (200, 202), answer.json
    [changed] = SINK.received(to=student.email)[1:]
    assert changed.message["Subject"] == f"Your Algebra trainer is now {new.name}"
    assert "Tuesday 24 November 2026, 17:00 (America/New_York)" in changed.body
    [notice] = SINK.received(to=new.email)
    assert f"{student.name} <{student.email}> moves to you from another trainer" in notice.body
    assert "Tuesday 24 November 2026, 22:00 (Europe/London)" in notice.body


def test_shifted_dates_are_told_in_one_mail_in_the_students_zone(db_session, eager, clock):
    clock(MONDAY_NOON)
    student = make_student(db_session, timezone="Europe/Berlin")
    payment_id = uuid.uuid4()
    notifications.sessions_shifted_notice(
        db_session,
        payment_id,
        student_id=student.id,
        allocation_id=1,
        slot=time(9, 0),
        shifts=[Shift(date(2026, 11, 25), date(2026, 11, 26), ShiftReason.TRAINER_BUSY)],
    )
    db_session.commit()  # the outbox message is published after the commit: sent
    [mail] = SINK.received(to=student.email)
    assert "  - Wednesday 25 November 2026 → Thursday 26 November 2026, 09:00 (Europe/Berlin)" in (
        mail.body
    )
    assert "(trainer busy)" in mail.body


def test_a_refused_recipient_is_failed_and_dead_lettered(db_session, eager):
    [notification_id] = notifications.write(
        db_session,
        uuid.uuid4(),
        # The sink answers 550 for bounce@.
        [Notice(NotificationKind.REFUNDED, "bounce@test.example", subject="s", body="b")],
    )
    db_session.flush()
    result = send_notification.apply(
        args=[notification_id], kwargs={"correlation_id": "c"}, throw=False
    )
    assert result.failed()
    [row] = rows(db_session, id=notification_id)
    assert (row.status, row.attempts) == (NotificationStatus.FAILED, 1)
    assert "550" in row.last_error
    letter = db_session.scalars(select(DeadLetter)).one()
    assert letter.task_name == "tutorflow.notifications.send"
    assert letter.exception_type == "domain.errors.PermanentStepError"
    assert letter.retries == 0
    assert not SINK.received(to="bounce@test.example")


def test_a_send_whose_publish_was_lost_is_published_by_the_relay(db_connection, eager):
    recipient = f"relay-{uuid.uuid4().hex[:12]}@test.example"
    # Committed through a plain Session (no after-commit channel): nothing was published,
    # as when the process dies right after its commit, or the broker is down.
    with Session(bind=db_connection, join_transaction_mode="create_savepoint") as session:
        [notification_id] = notifications.write(
            session,
            uuid.uuid4(),
            [Notice(NotificationKind.REFUNDED, recipient, "Your payment was refunded", "b")],
        )
        # Older than the relay's grace (rows that young are left to the channel).
        session.execute(update(OutboxMessage).values(created_at=func.now() - timedelta(minutes=1)))
        session.commit()
    assert not SINK.received(to=recipient)
    assert relay_outbox.apply().get() == {"published": 1, "failed": 0}
    [mail] = SINK.received(to=recipient)
    with Session(bind=db_connection) as session:
        row = session.get_one(Notification, notification_id)
        assert (row.status, row.message_id) == (NotificationStatus.SENT, mail.message_id)
        assert session.scalar(select(OutboxMessage.published_at)) is not None


def test_the_smtp_login_is_read_from_the_environment_and_never_shown():
    settings = Settings.from_env(
        {"SMTP_URL": "smtps://relay.example:2465", "SMTP_USER": "tf", "SMTP_PASSWORD": "s3cret"}
    )
    server = bootstrap(settings).mailer.server
    assert (server.host, server.port, server.implicit_tls) == ("relay.example", 2465, True)
    assert (server.user, server.password) == ("tf", "s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(server)
    in_url = SmtpServer.from_url("smtp://u:p%40ss@relay.example:587?starttls=1")
    assert (in_url.user, in_url.password, in_url.starttls) == ("u", "p@ss", True)
    assert "p@ss" not in repr(in_url)


# With a real worker: delivery semantics.


def seed_notification() -> tuple[int, str]:
    """One notification, committed with its outbox message: the after-commit channel
    publishes its send task."""
    payment_id = uuid.uuid4()
    recipient = f"student-{payment_id.hex[:12]}@test.example"
    with open_session() as session, session.begin():
        [notification_id] = notifications.write(
            session,
            payment_id,
            [
                Notice(
                    NotificationKind.REFUNDED,
                    recipient,
                    subject="Your payment was refunded",
                    body="Hello,\n\nyour payment was refunded.\n",
                )
            ],
        )
    return notification_id, recipient


def stored(notification_id: int) -> Notification:
    with open_session() as session:
        return session.get_one(Notification, notification_id)


def is_sent(notification_id: int) -> bool:
    return stored(notification_id).status == NotificationStatus.SENT


def of_payment(payment_id: uuid.UUID) -> list[Notification]:
    with open_session() as session:
        return rows(session, correlation_id=payment_id)


@pytest.mark.worker
def test_copies_of_one_send_delivered_to_a_real_worker_send_one_mail(committed):
    with celery_worker(queues="notifications,dead_letter_intake", concurrency=2) as worker:
        notification_id, recipient = seed_notification()  # published once, after commit
        correlation_id = str(stored(notification_id).correlation_id)
        for _ in range(3):  # three more copies: a relay's re-publish, redeliveries
            send_notification.apply_async(
                args=[notification_id], kwargs={"correlation_id": correlation_id}
            )
        wait_until(
            lambda: worker.log().count("notification sent already") == 3,
            60,
            "not every copy ran",
        )
    assert stored(notification_id).status == NotificationStatus.SENT
    assert len(SINK.received(to=recipient)) == 1


@pytest.mark.worker
def test_a_dead_mail_server_holds_up_no_fulfilment_and_the_mail_goes_once_it_is_back(
    committed,
):
    server = SmtpSink()  # not started: its port refuses connections
    env = {"SMTP_URL": server.url, "CELERY_RETRY_BACKOFF": "1"}
    payment_id, _ = seed_payment()
    with celery_worker(queues=WITH_MAIL, env=env):
        confirm_and_publish(payment_id)
        wait_until(lambda: sessions_count() == 7, 60, "fulfilment waited for the mail")

        def retrying() -> bool:
            found = of_payment(payment_id)
            return len(found) == 2 and all(r.status == "retrying" for r in found)

        wait_until(retrying, 60, "the sends were not retried")
        assert "ConnectionRefusedError" in of_payment(payment_id)[0].last_error
        server.start()
        try:
            wait_until(
                lambda: all(r.status == "sent" for r in of_payment(payment_id)),
                120,
                "the mail never went out once the server was back",
            )
        finally:
            server.stop()
    sent = of_payment(payment_id)
    assert [r.kind for r in sent] == [
        NotificationKind.SESSIONS_BOOKED,
        NotificationKind.NEW_STUDENT,
    ]
    # The first was tried at each retry; the second waited behind it (one connection).
    assert sent[0].attempts >= 2 and sent[1].attempts >= 1
    for notification in sent:
        [mail] = server.received(to=notification.recipient)
        assert mail.message_id == notification.message_id
        assert notification.last_error is None  # the refused connection, forgotten once sent


@pytest.mark.worker
@pytest.mark.parametrize("killed", ["pool_child", "whole_worker"])
def test_a_worker_killed_after_the_server_took_the_mail_sends_it_again_with_its_message_id(
    committed, killed
):
    """The stated guarantee: at least once, and a second copy carries the same
    Message-ID. The worker is paused in the commit that would record the send (the
    server has the message), and SIGKILLed there: its pool child (the worker requeues
    the message at once), or the whole worker with its pool (nobody acks or requeues:
    the broker redelivers after the visibility timeout, to a new worker)."""
    env = {"FAULT_PAUSE_STEP": "tutorflow.notifications.send", "FAULT_PAUSE_SECONDS": "60"}
    restarted = {"CELERY_VISIBILITY_TIMEOUT": "3", **time_limit_env(2)}
    queues = "notifications,dead_letter_intake"
    with celery_worker(queues=queues, env=env) as worker:
        notification_id, recipient = seed_notification()
        worker.wait_for_log("fault pause pid=", timeout=60)
        [first] = SINK.received(to=recipient)  # the server took it...
        paused = stored(notification_id)
        assert (paused.status, paused.attempts) == ("sending", 1)  # ...we did not record it
        if killed == "pool_child":
            pid = int(re.search(r"fault pause pid=(\d+)", worker.log()).group(1))
            os.kill(pid, signal.SIGKILL)  # the child dies with that transaction open
            wait_until(lambda: is_sent(notification_id), 60, "the send was not redone")
        else:
            worker.kill()
    if killed == "whole_worker":
        assert stored(notification_id).status == NotificationStatus.SENDING
        with celery_worker(queues=queues, env=restarted):
            wait_until(lambda: is_sent(notification_id), 60, "the send was not redelivered")
    final = stored(notification_id)
    assert final.attempts == 2
    received = SINK.received(to=recipient)
    assert len(received) == 2  # at least once: the second attempt could not know
    assert first.message_id == received[1].message_id == final.message_id  # recognisable


@pytest.mark.worker
def test_retries_spent_on_a_dead_server_dead_letter_the_mail_and_a_replay_sends_it_once(
    committed,
):
    server = SmtpSink()  # not started: its port refuses connections
    # Retries at once (the tests' CELERY_RETRY_BACKOFF=0): 8 retries are spent in moments.
    with celery_worker(queues="notifications,dead_letter_intake", env={"SMTP_URL": server.url}):
        notification_id, recipient = seed_notification()

        def letter() -> DeadLetter | None:
            with open_session() as session:
                return session.scalars(select(DeadLetter)).one_or_none()

        wait_until(letter, 60, "the spent retries were not dead-lettered")
        parked = letter()
        assert parked.task_name == "tutorflow.notifications.send"
        assert parked.retries == 8
        failed = stored(notification_id)
        assert (failed.status, failed.attempts) == (NotificationStatus.FAILED, 9)
        assert "ConnectionRefusedError" in failed.last_error
        server.start()
        try:
            with open_session() as session, session.begin():
                dead_letters.replay(session, parked.id)  # published after the commit
            wait_until(lambda: is_sent(notification_id), 60, "the replay never sent it")
        finally:
            server.stop()
    [mail] = server.received(to=recipient)
    assert mail.message_id == stored(notification_id).message_id
