"""The one after-commit channel: what a transaction wrote is handed over only after its
commit, savepoints and rollbacks respected, each callback isolated from the others."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
import redis
from sqlalchemy import Connection, select

from bootstrap import bootstrap
from core.cache import student_channel, version_key
from domain.events import EventType, record_event
from models import (
    Committed,
    Database,
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
