"""Time under load, for real: a worker process, threads with their own connections.

- Allocations, reschedules and top-ups race against one trainer: PostgreSQL's exclusion
  constraint is never violated, and no request sees a 500 (a lost race is a 409 or a
  retried step).
- A trainer with 20 students is deactivated in the middle of a burst of payments: every
  allocation moves exactly once, no session is lost or doubled, and the timeline and
  home screen name the new trainer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from domain.events import EventType
from harness.processes import celery_worker, wait_until
from models import (
    Allocation,
    Course,
    DomainEvent,
    Purchase,
    Trainer,
    TutoringSession,
)
from tasks.beat import run_top_up
from tests.conftest import ADMIN, celery_app, open_session, student_auth
from tests.factories import (
    make_allocation,
    make_course,
    make_payment,
    make_student,
    make_trainer,
)
from tests.test_concurrency import race

pytestmark = pytest.mark.worker

# Scheduled sessions of one trainer that overlap: must always be none.
OVERLAPS = text(
    """
    SELECT count(*) FROM tutoring_sessions a JOIN tutoring_sessions b
      ON a.trainer_id = b.trainer_id AND a.id < b.id
     AND tstzrange(a.starts_at, a.ends_at) && tstzrange(b.starts_at, b.ends_at)
    WHERE a.status = 'scheduled' AND b.status = 'scheduled'
    """
)


def pending(session: Session, course: Course, slots: list[time]) -> list[uuid.UUID]:
    """Students who paid at the provider and have yet to say so."""
    return [
        make_payment(session, make_student(session, timezone="UTC"), course, slot=slot).id
        for slot in slots
    ]


def confirm(app, payment_id: uuid.UUID):
    """The call "I paid" over HTTP, for `race`: its status code."""
    return lambda: (
        app.test_client()
        .post(f"/api/v1/payments/{payment_id}/confirm", json={}, headers=ADMIN)
        .status_code
    )


def fully_scheduled(payment_ids: list[uuid.UUID]) -> int:
    with open_session() as session:
        rows = session.execute(
            select(Purchase.payment_id, func.count())
            .join(Allocation, Allocation.purchase_id == Purchase.id)
            .join(TutoringSession, TutoringSession.allocation_id == Allocation.id)
            .where(Purchase.payment_id.in_(payment_ids), TutoringSession.status == "scheduled")
            .group_by(Purchase.payment_id)
        ).all()
    return sum(1 for _, count in rows if count == 7)


def overlaps() -> int:
    with open_session() as session:
        return session.scalar(OVERLAPS)


def top_up_in_two_threads():
    """The beat job's top-up as production runs it (TOP_UP_THREADS=2; the tests' is 1)."""
    return run_top_up(celery_app, threads=2)


def test_allocations_reschedules_and_top_ups_racing_on_one_trainer(live_app):
    start = datetime.now(UTC)
    with open_session() as session, session.begin():
        course = make_course(session)
        trainer = make_trainer(session, [course], max_students=30)
        movers = [make_allocation(session, course, slot=time(8 + i), now=start) for i in range(4)]
        # Each mover asks for their fifth session to go to 20:00 UTC that day: one wins.
        targets = [
            (
                a.student_id,
                future_sessions(session, a.id, start)[4].id,
                datetime.combine(
                    future_sessions(session, a.id, start)[4].starts_at.date(), time(20), UTC
                ),
            )
            for a in movers
        ]
        newcomers = pending(session, course, [time(h) for h in range(12, 20)])

    def reschedule(student_id: int, session_id: int, starts_at: datetime):
        return lambda: (
            live_app.test_client()
            .post(
                f"/api/v1/sessions/{session_id}/reschedule",
                json={"starts_at": starts_at.isoformat()},
                headers=student_auth(student_id),
            )
            .status_code
        )

    with celery_worker():
        results = race(
            [confirm(live_app, p) for p in newcomers]
            + [reschedule(*target) for target in targets]
            + [top_up_in_two_threads, top_up_in_two_threads]
        )
        confirms, moves, top_ups = results[:8], results[8:12], results[12:]
        assert confirms == [202] * 8
        assert sorted(moves) == [200, 409, 409, 409]  # one wins the 20:00; never a 500
        assert not [r for r in top_ups if isinstance(r, BaseException)]
        wait_until(lambda: fully_scheduled(newcomers) == 8, 60, "newcomers not scheduled")
    assert overlaps() == 0
    top_up_in_two_threads()
    with open_session() as session:
        for allocation in session.scalars(
            select(Allocation).where(Allocation.trainer_id == trainer.id)
        ):
            assert len(future_sessions(session, allocation.id, datetime.now(UTC))) == 7
    assert overlaps() == 0


def future_sessions(session: Session, allocation_id: int, after: datetime) -> list[TutoringSession]:
    return list(
        session.scalars(
            select(TutoringSession)
            .where(
                TutoringSession.allocation_id == allocation_id,
                TutoringSession.status == "scheduled",
                TutoringSession.starts_at > after,
            )
            .order_by(TutoringSession.starts_at)
        )
    )


def test_deactivating_a_trainer_with_20_students_mid_burst_moves_each_once(live_app):
    start = datetime.now(UTC)
    with open_session() as session, session.begin():
        course = make_course(session, session_minutes=30)
        leaving = make_trainer(session, [course], max_students=20)
        # Twenty half-hour students, 08:00 to 17:30 UTC, all with the leaving trainer.
        moving = [
            make_allocation(session, course, slot=time(8 + i // 2, 30 * (i % 2)), now=start).id
            for i in range(20)
        ]
        taking = make_trainer(session, [course], max_students=60)
        # The burst: twenty more students, 18:00 to 03:30 UTC (free times of the day).
        burst = pending(
            session, course, [time((18 + i // 2) % 24, 30 * (i % 2)) for i in range(20)]
        )
    sessions_before = {a: session_ids(a) for a in moving}

    def deactivate():
        return (
            live_app.test_client()
            .patch(f"/api/v1/trainers/{leaving.id}", json={"active": False}, headers=ADMIN)
            .status_code
        )

    with celery_worker():
        calls = [confirm(live_app, p) for p in burst]
        calls.insert(10, deactivate)  # in the middle of the burst
        results = race(calls)
        assert results.count(202) == 20 and results.count(200) == 1, results
        wait_until(
            lambda: moved_count(moving) == 20 and fully_scheduled(burst) == 20,
            90,
            "the moves or the burst did not finish",
        )
    with open_session() as session:
        reallocated = session.scalars(
            select(DomainEvent).where(DomainEvent.event_type == EventType.TRAINER_REALLOCATED)
        ).all()
        assert sorted(e.payload["allocation_id"] for e in reallocated) == sorted(
            moving
        )  # once each
        for allocation_id in moving:
            assert session_ids(allocation_id) == sessions_before[allocation_id]  # none lost or new
            upcoming = future_sessions(session, allocation_id, datetime.now(UTC))
            assert {s.trainer_id for s in upcoming} == {taking.id}
        counts = dict(session.execute(select(Trainer.id, Trainer.active_students)).all())
        assert (counts[leaving.id], counts[taking.id]) == (0, 40)
        student_id = session.get_one(Allocation, moving[0]).student_id
    assert overlaps() == 0
    client = live_app.test_client()
    home = client.get(f"/api/v1/students/{student_id}/home", headers=student_auth(student_id)).json
    assert {s["trainer"] for s in home["upcoming_sessions"]} == {taking.name}


def moved_count(allocation_ids: list[int]) -> int:
    """Allocations that arrived with the new trainer (TRAINER_REALLOCATED recorded)."""
    with open_session() as session:
        return session.scalar(
            select(
                func.count(func.distinct(DomainEvent.payload["allocation_id"].as_integer()))
            ).where(DomainEvent.event_type == EventType.TRAINER_REALLOCATED)
        )


def session_ids(allocation_id: int) -> list[int]:
    with open_session() as session:
        return list(
            session.scalars(
                select(TutoringSession.id)
                .where(
                    TutoringSession.allocation_id == allocation_id,
                    TutoringSession.status != "cancelled",
                )
                .order_by(TutoringSession.id)
            )
        )
