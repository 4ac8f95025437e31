"""Beat jobs: the rolling window over time, completion, concurrency, retention, leader."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from domain import fulfilment
from domain.payments import has_active_course
from domain.top_up import Shard, TopUpReport, top_up_batch
from harness.brokers import queue_length
from models import (
    Allocation,
    OutboxKind,
    OutboxMessage,
    ProcessedEvent,
    Purchase,
    SessionStatus,
    TrainerCourse,
    TutoringSession,
)
from tasks.beat import LOCK_KEYS, prune_retention, run_top_up, top_up_sessions
from tests.conftest import celery_app, open_session
from tests.factories import (
    make_allocation,
    make_course,
    make_payment,
    make_student,
    make_trainer,
)

MONDAY = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def allocate(
    session,
    *,
    tier=20,
    timezone="Europe/Berlin",
    slot=time(17, 30),
    trainer=None,
    now=MONDAY,
    minutes=60,
):
    course = make_course(session, session_minutes=minutes)
    trainer = trainer or make_trainer(session, [course], max_students=5)
    if course.id not in {c.id for c in trainer.courses}:
        session.add(TrainerCourse(trainer_id=trainer.id, course_id=course.id))
        session.flush()
    return make_allocation(session, course, slot=slot, now=now, timezone=timezone, tier=tier)


def future(session, allocation_id: int, now: datetime) -> list[TutoringSession]:
    return list(
        session.scalars(
            select(TutoringSession)
            .where(
                TutoringSession.allocation_id == allocation_id,
                TutoringSession.status == "scheduled",
                TutoringSession.starts_at > now,
            )
            .order_by(TutoringSession.starts_at)
        )
    )


def top_up_all(session, now: datetime, batch: int = 100) -> TopUpReport:
    report, after = TopUpReport(), 0
    while True:
        part, last = top_up_batch(
            session, now=now, after_id=after, limit=batch, window=7, threshold=7
        )
        report.add(part)
        if last is None:
            return report
        after = last


def test_after_five_weekdays_the_top_up_restores_seven_future_sessions(db_session):
    allocation = allocate(db_session, tier=20)
    assert len(future(db_session, allocation.id, MONDAY)) == 7
    # Monday 18:00 UTC a week later: five weekdays of sessions (Tue to Mon) have passed.
    next_monday = MONDAY + timedelta(days=7, hours=6)
    assert len(future(db_session, allocation.id, next_monday)) == 2
    report = top_up_all(db_session, next_monday)
    assert report.sessions_created == 5
    upcoming = future(db_session, allocation.id, next_monday)
    assert len(upcoming) == 7
    dates = [s.scheduled_date for s in upcoming]
    assert all(d.weekday() < 5 for d in dates)
    assert dates == sorted(set(dates))
    assert dates[-1] == date(2026, 12, 9)  # continues after the last one, skipping the weekend


def test_allocations_with_a_full_window_are_left_alone(db_session):
    allocation = allocate(db_session, tier=20)
    assert top_up_all(db_session, MONDAY).sessions_created == 0
    wednesday = MONDAY + timedelta(days=2)  # Tuesday's session past: 6 ahead, one short
    assert top_up_all(db_session, wednesday).sessions_created == 1
    assert len(future(db_session, allocation.id, wednesday)) == 7


def test_a_session_today_whose_time_has_passed_is_not_future(db_session):
    allocation = allocate(db_session, tier=20, timezone="UTC", slot=time(9, 0))
    sessions = future(db_session, allocation.id, MONDAY)
    fifth = sessions[4]
    at_start = fifth.starts_at  # exactly at its start it no longer counts
    assert len(future(db_session, allocation.id, at_start)) == 2
    report = top_up_all(db_session, at_start)
    assert report.sessions_created == 5
    assert len(future(db_session, allocation.id, at_start)) == 7
    just_before = at_start - timedelta(microseconds=1)
    assert fifth in future(db_session, allocation.id, just_before)


def test_a_ten_session_tier_ends_at_exactly_ten_and_completes(db_session):
    trainer_course = make_course(db_session)
    trainer = make_trainer(db_session, [trainer_course], max_students=1)
    allocation = allocate(db_session, tier=10, trainer=trainer)
    db_session.refresh(trainer)
    assert trainer.active_students == 1

    for weeks in (1, 2, 3, 4):
        top_up_all(db_session, MONDAY + timedelta(weeks=weeks))
    total = db_session.scalar(
        select(func.count()).where(TutoringSession.allocation_id == allocation.id)
    )
    assert total == 10

    db_session.refresh(allocation)
    assert allocation.status == "completed"
    purchase = db_session.get_one(Purchase, allocation.purchase_id)
    assert purchase.is_active is False
    db_session.refresh(trainer)
    assert trainer.active_students == 0  # the place is free again
    assert not has_active_course(db_session, allocation.student_id, allocation.course_id)


def test_sessions_land_on_weekdays_in_the_students_timezone(db_session):
    tokyo = allocate(db_session, tier=20, timezone="Asia/Tokyo", slot=time(8, 0))
    for s in future(db_session, tokyo.id, MONDAY):
        local = s.starts_at.astimezone(ZoneInfo("Asia/Tokyo"))
        assert (local.hour, local.minute) == (8, 0)
        assert local.date() == s.scheduled_date
        assert local.weekday() < 5


def test_cancelled_session_is_replaced_by_the_top_up(db_session, client, clock):
    from tests.conftest import ADMIN

    allocation = allocate(db_session, tier=20)
    clock(MONDAY)
    upcoming = future(db_session, allocation.id, MONDAY)
    for s in upcoming[:5]:
        assert client.post(f"/api/v1/sessions/{s.id}/cancel", headers=ADMIN).status_code == 200
    again = client.post(f"/api/v1/sessions/{upcoming[0].id}/cancel", headers=ADMIN)
    assert again.status_code == 409
    too_early = client.post(f"/api/v1/sessions/{upcoming[5].id}/complete", headers=ADMIN)
    assert too_early.status_code == 409
    assert top_up_all(db_session, MONDAY).sessions_created == 5
    assert len(future(db_session, allocation.id, MONDAY)) == 7


def test_two_concurrent_top_ups_create_no_duplicate_sessions(committed):
    with open_session() as session, session.begin():
        course = make_course(session)
        trainers = [make_trainer(session, [course], max_students=40) for _ in range(2)]
        # 30 quarter-hour sessions a day for each trainer, back to back.
        ids = [
            allocate(
                session,
                tier=30,
                slot=time(6 + i // 8, 15 * (i // 2 % 4)),
                trainer=trainers[i % 2],
                minutes=15,
            ).id
            for i in range(60)
        ]
    later = MONDAY + timedelta(days=7, hours=6)  # every allocation is down to 2 future
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            after = 0
            while True:
                with open_session() as session, session.begin():
                    _, last = top_up_batch(
                        session, now=later, after_id=after, limit=7, window=7, threshold=7
                    )
                if last is None:
                    return
                after = last
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open_session() as session:
        for allocation_id in ids:
            assert len(future(session, allocation_id, later)) == 7
        duplicates = session.execute(
            text(
                "SELECT allocation_id, scheduled_date FROM tutoring_sessions "
                "GROUP BY 1, 2 HAVING count(*) > 1"
            )
        ).all()
        assert duplicates == []


def test_a_second_top_up_job_does_nothing_while_one_runs(committed):
    with open_session() as session, session.begin():
        allocate(session, tier=20)
    with committed.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEYS["top_up_sessions"]})
        assert top_up_sessions.run() == {"skipped": True}
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEYS["top_up_sessions"]})
        holder.commit()
    assert top_up_sessions.run()["allocations_seen"] == 1


def test_the_job_tops_up_in_batches(committed, clock):
    with open_session() as session, session.begin():
        ids = [allocate(session, tier=20, slot=time(6 + i, 0)).id for i in range(5)]
    clock(MONDAY + timedelta(days=7))
    report = run_top_up(celery_app, batch_size=2, threads=2)  # production's default (the tests': 1)
    assert report.allocations_seen == 5
    assert report.sessions_created == 25
    with open_session() as session:
        assert all(len(future(session, i, MONDAY + timedelta(days=7))) == 7 for i in ids)


def test_shards_split_the_allocations_by_trainer_and_cover_each_once(db_session, clock):
    allocations = [allocate(db_session, slot=time(6 + i, 0)) for i in range(6)]
    clock(MONDAY + timedelta(days=7))
    seen: dict[int, list[int]] = {}
    for index in range(3):
        after: int | None = 0
        while after is not None:
            _, last = top_up_batch(
                db_session,
                now=MONDAY + timedelta(days=7),
                after_id=after,
                limit=1,
                window=7,
                threshold=7,
                shard=Shard(index, 3),
            )
            if last is not None:
                seen.setdefault(index, []).append(last)
            after = last
    by_id = {a.id: a.trainer_id for a in allocations}
    assert sorted(i for ids in seen.values() for i in ids) == sorted(by_id)  # each once
    for index, ids in seen.items():
        assert {by_id[i] % 3 for i in ids} == {index}  # a trainer belongs to one shard


def test_threads_top_up_side_by_side_with_completions_and_no_deadlock(committed, clock):
    """Two threads, ranges of one allocation, every allocation on one trainer and half
    of them completing: each batch locks the trainer before writing, so they queue."""
    with open_session() as session, session.begin():
        course = make_course(session)
        trainer = make_trainer(session, [course], max_students=8)
        ids = [
            make_allocation(session, course, slot=time(8 + i, 0), now=MONDAY).id for i in range(8)
        ]
        # Half of them have used their whole tier: the top-up completes those.
        session.execute(
            update(TutoringSession)
            .where(TutoringSession.allocation_id.in_(ids[:4]))
            .values(status=SessionStatus.COMPLETED)
        )
        session.execute(
            update(Allocation).where(Allocation.id.in_(ids[:4])).values(sessions_total=7)
        )
    clock(MONDAY + timedelta(days=7))
    report = run_top_up(celery_app, batch_size=1, threads=2)
    assert report.allocations_seen == 8
    with open_session() as session:
        assert session.get(type(trainer), trainer.id).active_students == 4
        assert all(len(future(session, i, MONDAY + timedelta(days=7))) == 7 for i in ids[4:])


def test_retention_prunes_only_old_published_and_processed_rows(db_session, clock):
    clock(MONDAY)
    old = MONDAY - timedelta(days=40)
    db_session.add_all(
        [
            OutboxMessage(correlation_id=uuid.uuid4(), kind="start_pipeline", published_at=old),
            OutboxMessage(correlation_id=uuid.uuid4(), kind="start_pipeline", published_at=None),
            OutboxMessage(correlation_id=uuid.uuid4(), kind="start_pipeline", published_at=MONDAY),
            ProcessedEvent(consumer="c", correlation_id="x", event_type="E", processed_at=old),
            ProcessedEvent(consumer="c", correlation_id="y", event_type="E", processed_at=MONDAY),
        ]
    )
    db_session.flush()
    removed = prune_retention.run()
    assert removed["outbox"] == 1
    assert removed["processed_events"] == 1
    assert db_session.scalar(select(func.count()).select_from(OutboxMessage)) == 2
    assert db_session.scalar(select(func.count()).select_from(ProcessedEvent)) == 1


def test_two_beats_relaying_at_once_publish_a_stranded_message_once(committed):
    """A second beat started by mistake sends every job twice: the job's advisory lock
    (or, run after the first, the stamped row) makes the effect happen once."""
    from tasks.beat import relay_outbox

    # Stranded: written by a process that died before its after-commit publish (a plain
    # Session has no channel).
    with Session(celery_app.database.engine) as session, session.begin():
        session.add(
            OutboxMessage(
                correlation_id=uuid.uuid4(),
                kind=OutboxKind.START_PIPELINE,
                payload={"payment_id": str(uuid.uuid4())},
                created_at=datetime.now(UTC) - timedelta(hours=1),
            )
        )
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge("provider")  # where a chain starts
    barrier, results = threading.Barrier(2), []

    def beat() -> None:
        barrier.wait()
        results.append(relay_outbox.run())

    beats = [threading.Thread(target=beat) for _ in range(2)]
    for thread in beats:
        thread.start()
    for thread in beats:
        thread.join(30)
    assert sorted(r.get("published", 0) for r in results) == [0, 1], results
    assert queue_length(celery_app.conf.broker_url, "provider") == 1


def test_a_stalled_pipeline_is_resumed_once_and_finishes(db_session, eager, clock):
    from tasks.beat import resume_stalled_pipelines

    course = make_course(db_session)
    make_trainer(db_session, [course])
    stalled = make_payment(db_session, make_student(db_session), course, confirmed=True)
    fulfilment.create_purchase(db_session, stalled.id)  # then the chain's next link was lost
    parked = make_payment(
        db_session, make_student(db_session), course, slot=time(9, 0), confirmed=True
    )
    from tests.factories import make_dead_letter

    make_dead_letter(db_session, correlation_id=str(parked.id))
    fresh = make_payment(db_session, make_student(db_session), course, slot=time(10, 0))
    db_session.flush()

    clock(utcnow_plus(minutes=11))
    assert resume_stalled_pipelines.run() == {"resumed": 1}
    assert len(future(db_session, _allocation_of(db_session, stalled.id), utcnow_plus())) == 7
    assert resume_stalled_pipelines.run() == {"resumed": 0}  # done, and resumed recently
    assert fresh.status == "pending"


def utcnow_plus(**delta) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def _allocation_of(session, payment_id) -> int:
    return session.scalar(
        select(Allocation.id)
        .join(Purchase, Purchase.id == Allocation.purchase_id)
        .where(Purchase.payment_id == payment_id)
    )


def test_every_beat_entry_names_a_task_the_workers_register():
    # A misspelt name is only an ERROR line in a worker's log ("unregistered task"),
    # once a minute, and the job never runs.
    unknown = {
        entry: spec["task"]
        for entry, spec in celery_app.conf.beat_schedule.items()
        if spec["task"] not in celery_app.tasks
    }
    assert unknown == {}
