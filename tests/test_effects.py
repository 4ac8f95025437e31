"""The one after-commit channel: what a transaction wrote is handed over only after its
commit, savepoints and rollbacks respected, each callback isolated from the others."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import Connection, event, func, select, text
from sqlalchemy.orm import Session

from actions.steps import Delivery, once
from bootstrap import bootstrap
from core.cache import student_channel, version_key
from domain import step_runs
from domain.events import EventType, record_event
from models import (
    Committed,
    Database,
    DomainEvent,
    OutboxKind,
    OutboxMessage,
    Student,
    WrittenEvent,
    note_events,
    write_now,
)
from models.effects import WrittenOutbox
from models.outbox import AfterCommitChannel, Publisher
from tests.conftest import sessions_joining, settings
from tests.factories import make_student


@pytest.fixture
def handed_over(db_connection: Connection):
    """A Database whose channel records what it is handed, joined to the test's
    transaction."""
    received: list[Committed] = []
    database = Database(settings, channel=received.append)
    with sessions_joining(database, db_connection):
        yield database, received
    database.engine.dispose()


def test_rows_written_in_a_transaction_are_handed_over_once_after_commit(handed_over):
    database, received = handed_over
    correlation = uuid.uuid4()
    with database.transaction() as session:
        student = make_student(session)
        record_event(
            session,
            correlation_id=correlation,
            student_id=student.id,
            event_type=EventType.PURCHASE_CREATED,
        )
        note_events(session, [WrittenEvent(str(correlation), student.id, "RAW_SQL_EVENT")])
        session.add(
            OutboxMessage(correlation_id=correlation, kind=OutboxKind.START_PIPELINE, payload={})
        )
        session.flush()
        assert received == []  # nothing before the commit
    [committed] = received
    assert sorted(e.event_type for e in committed.events) == ["PURCHASE_CREATED", "RAW_SQL_EVENT"]
    [message] = committed.outbox
    assert message.kind == OutboxKind.START_PIPELINE
    assert message.correlation_id == str(correlation)
    assert message.id == database.session().scalar(select(OutboxMessage.id))


def test_a_rollback_hands_over_nothing(handed_over):
    database, received = handed_over
    with pytest.raises(RuntimeError), database.transaction() as session:
        student = make_student(session)
        record_event(
            session,
            correlation_id=uuid.uuid4(),
            student_id=student.id,
            event_type=EventType.PURCHASE_CREATED,
        )
        session.flush()
        raise RuntimeError("rolled back")
    assert received == []
    later = uuid.uuid4()
    with database.transaction() as session:  # a later commit carries nothing of it
        note_events(session, [WrittenEvent(str(later), None, "LATER")])
    [committed] = received
    assert [e.correlation_id for e in committed.events] == [str(later)]


def test_a_row_of_a_rolled_back_savepoint_is_not_announced(handed_over):
    database, received = handed_over
    with database.transaction() as session:
        student = make_student(session)
        savepoint = session.begin_nested()
        record_event(
            session,
            correlation_id=uuid.uuid4(),
            student_id=student.id,
            event_type=EventType.TRAINER_ALLOCATED,
        )
        session.flush()
        savepoint.rollback()
        record_event(
            session,
            correlation_id=uuid.uuid4(),
            student_id=student.id,
            event_type=EventType.PURCHASE_CREATED,
        )
    [committed] = received
    assert [e.event_type for e in committed.events] == ["PURCHASE_CREATED"]


def test_a_failing_publish_is_logged_and_the_other_callbacks_still_run(
    db_connection, redis_client, caplog
):
    """One outbox kind's publisher raises: the next message is still published and the
    student's read models are still invalidated and announced."""
    published: list[dict] = []

    def broken(payload: dict) -> None:
        raise ConnectionError("broker gone")

    channel = AfterCommitChannel(
        Publisher({"broken": broken, "working": published.append}),
        bootstrap(settings).cache.announce,
    )
    bad, good = uuid.uuid4(), uuid.uuid4()
    pubsub = redis.Redis.from_url(settings.cache_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(student_channel(77))
    with caplog.at_level(logging.WARNING, logger="models.outbox"):
        channel(
            Committed(
                events=(WrittenEvent(str(good), 77, "SESSIONS_GENERATED", {"count": 7}),),
                outbox=(
                    WrittenOutbox(-1, str(bad), "broken", {"n": 1}),
                    WrittenOutbox(-2, str(good), "working", {"n": 2}),
                ),
                bind=db_connection,
            )
        )
    assert published == [{"n": 2}]
    [failure] = [r for r in caplog.records if "publish failed" in r.getMessage()]
    assert failure.correlation_id == str(bad)
    assert redis_client.get(version_key(77)) == b"1"
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)  # the subscribe reply reads as None
    assert message is not None
    assert json.loads(message["data"])["type"] == "SESSIONS_GENERATED"
    pubsub.close()


def test_write_now_writes_the_row_at_once_and_leaves_nothing_to_flush(db_session):
    """models.write_now: one UPDATE now; the object shows the values as if loaded so,
    and the session has nothing dirty for the commit to flush."""
    student = make_student(db_session)
    db_session.flush()
    write_now(db_session, student, timezone="Asia/Tokyo", name="Renamed")
    assert (student.timezone, student.name) == ("Asia/Tokyo", "Renamed")
    assert not db_session.dirty
    stored = db_session.execute(
        select(Student.timezone, Student.name).where(Student.id == student.id)
    ).one()
    assert tuple(stored) == ("Asia/Tokyo", "Renamed")


def _statements_on(connection: Connection) -> list[str]:
    sent: list[str] = []
    event.listen(connection, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def test_a_steps_events_go_out_with_its_record_in_one_statement(handed_over, db_connection):
    """models.defer_event: a step whose events are its last writes sends no INSERT of
    its own for them; the step's record (domain.step_runs) writes them, in the order they
    were recorded, and they are announced after the commit."""
    database, received = handed_over
    with database.transaction() as session:
        student = make_student(session)
    correlation = uuid.uuid4()

    def effect(session: Session) -> int:
        for event_type in (EventType.SESSION_SHIFTED, EventType.SESSIONS_GENERATED):
            record_event(
                session,
                correlation_id=correlation,
                student_id=student.id,
                event_type=event_type,
                payload={"n": 1},
            )
        return 7

    sent = _statements_on(db_connection)
    now = datetime.now(UTC)
    run = step_runs.Run(task_id="t-1", started_at=now)
    delivery = Delivery("schedule_sessions", str(correlation), "SESSIONS_WANTED", run)
    assert once(database, delivery, effect) == 7

    writes = [s for s in sent if "domain_events" in s]
    assert len(writes) == 1 and "INSERT INTO step_runs" in writes[0]
    rows = db_connection.execute(
        select(DomainEvent.event_type, DomainEvent.payload)
        .where(DomainEvent.correlation_id == correlation)
        .order_by(DomainEvent.id)
    ).all()
    assert [tuple(r) for r in rows] == [
        ("SESSION_SHIFTED", {"n": 1}),
        ("SESSIONS_GENERATED", {"n": 1}),
    ]
    [committed] = received
    assert [e.event_type for e in committed.events] == ["SESSION_SHIFTED", "SESSIONS_GENERATED"]
    # A redelivery returns the stored result and writes nothing again.
    assert once(database, delivery, effect) == 7
    assert (
        db_connection.scalar(select(func.count()).where(DomainEvent.correlation_id == correlation))
        == 2
    )


def test_a_recorded_event_is_seen_by_the_next_statement_and_dropped_with_its_savepoint(
    handed_over, db_connection
):
    database, received = handed_over
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    with database.transaction() as session:
        student = make_student(session)
        session.flush()
        record_event(
            session,
            correlation_id=kept,
            student_id=student.id,
            event_type=EventType.PAYMENT_VERIFIED,
        )
        # Any statement through the session sees it, plain SQL too.
        assert (
            session.scalar(
                text("SELECT count(*) FROM domain_events WHERE correlation_id = :c"), {"c": kept}
            )
            == 1
        )
        savepoint = session.begin_nested()
        record_event(
            session,
            correlation_id=dropped,
            student_id=student.id,
            event_type=EventType.PURCHASE_CREATED,
        )
        savepoint.rollback()  # before any statement: it was never inserted
    written = (
        db_connection.execute(
            select(DomainEvent.correlation_id).where(
                DomainEvent.correlation_id.in_([kept, dropped])
            )
        )
        .scalars()
        .all()
    )
    assert written == [kept]
    [committed] = received
    assert [e.correlation_id for e in committed.events] == [str(kept)]


def test_a_recorded_event_is_written_by_the_commit_when_nothing_follows(handed_over, db_connection):
    database, _ = handed_over
    correlation = uuid.uuid4()
    with database.transaction() as session:
        record_event(
            session,
            correlation_id=correlation,
            student_id=None,
            event_type=EventType.PIPELINE_RESUMED,
        )
    assert (
        db_connection.scalar(select(func.count()).where(DomainEvent.correlation_id == correlation))
        == 1
    )
