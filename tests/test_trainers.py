"""Trainers change: capacity, hours, time zone, deactivation. Students a trainer can no
longer serve move to another trainer through the reallocation chain (eager here; the
burst with a real worker is in test_time_races.py)."""

from __future__ import annotations

from datetime import time

from sqlalchemy import func, select

from domain.calendar import DEFAULT_WORKING_DAYS
from domain.events import EventType
from models import DeadLetter, DomainEvent, Trainer, TutoringSession
from tasks.celery_app import celery_app
from tests.conftest import ADMIN
from tests.factories import make_allocation, make_course, make_trainer
from tests.test_beat import MONDAY, allocate, future

WEEK = {
    "mon": {"starts": "09:00", "ends": "17:00"},
    "wed": {"starts": "12:00", "ends": "24:00"},
}


def patch(client, trainer_id: int, body: dict):
    return client.patch(f"/api/v1/trainers/{trainer_id}", json=body, headers=ADMIN)


def events(db_session, event_type: EventType) -> list[DomainEvent]:
    return list(db_session.scalars(select(DomainEvent).where(DomainEvent.event_type == event_type)))


def test_patch_sets_hours_timezone_and_capacity(db_session, client):
    trainer = make_trainer(db_session, [make_course(db_session)])
    answer = patch(
        client, trainer.id, {"working_hours": WEEK, "timezone": "Asia/Tokyo", "max_students": 3}
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["working_hours"] == WEEK  # the other days are off
    assert (answer.json["timezone"], answer.json["max_students"]) == ("Asia/Tokyo", 3)
    assert answer.json["reallocating"] == []


def test_bad_patches_are_4xx_and_change_nothing(db_session, client):
    trainer = make_trainer(db_session, [make_course(db_session)], max_students=2)
    before = patch(client, trainer.id, {}).json
    refused = [
        {"working_hours": {"mon": {"starts": "18:00", "ends": "09:00"}}},
        {"working_hours": {"someday": {"starts": "08:00", "ends": "09:00"}}},
        {"working_hours": {"mon": {"starts": "08:00", "ends": "24:30"}}},
        {"working_hours": {"mon": {"starts": "24:00", "ends": "24:00"}}},
        {"timezone": "Mars/Olympus"},
        {"active": "no"},
        {"max_students": 0},
    ]
    for body in refused:
        assert patch(client, trainer.id, body).status_code == 422, body
    assert patch(client, trainer.id, {}).json == before
    no_body = client.patch(f"/api/v1/trainers/{trainer.id}", headers=ADMIN)
    assert (no_body.status_code, no_body.json) == (200, before)  # names nothing: no change
    assert patch(client, 987654, {"active": False}).status_code == 404


def test_capacity_below_the_students_held_is_409(db_session, client):
    trainer = make_trainer(db_session, [make_course(db_session)], max_students=3)
    allocate(db_session, trainer=trainer)
    allocate(db_session, trainer=trainer, slot=time(9, 0))
    answer = patch(client, trainer.id, {"max_students": 1})
    assert (answer.status_code, answer.json["error"]["code"]) == (409, "capacity_below_load")
    assert db_session.get_one(Trainer, trainer.id).max_students == 3


def test_deactivating_a_trainer_moves_every_student_keeping_their_times(
    db_session, client, eager, clock
):
    clock(MONDAY)
    course = make_course(db_session)
    leaving = make_trainer(db_session, [course])
    staying = make_trainer(db_session, [course])
    staying.is_active = False  # both students go to the leaving trainer first
    moved = [
        make_allocation(db_session, course, slot=slot, now=MONDAY) for slot in (time(9), time(15))
    ]
    staying.is_active = True
    db_session.flush()
    assert {a.trainer_id for a in moved} == {leaving.id}
    before = {a.id: [s.starts_at for s in future(db_session, a.id, MONDAY)] for a in moved}

    answer = patch(client, leaving.id, {"active": False})
    assert answer.status_code == 200
    assert sorted(answer.json["reallocating"]) == sorted(a.id for a in moved)
    for allocation in moved:
        db_session.refresh(allocation)
        assert allocation.trainer_id == staying.id
        sessions = future(db_session, allocation.id, MONDAY)
        assert [s.starts_at for s in sessions] == before[allocation.id]  # times kept
        assert {s.trainer_id for s in sessions} == {staying.id}
    db_session.refresh(leaving)
    db_session.refresh(staying)
    assert (leaving.active_students, staying.active_students) == (0, 2)
    assert len(events(db_session, EventType.REALLOCATION_REQUESTED)) == 2
    reallocated = events(db_session, EventType.TRAINER_REALLOCATED)
    assert [e.payload["to_trainer_id"] for e in reallocated] == [staying.id] * 2
    assert events(db_session, EventType.SESSION_SHIFTED) == []

    # The timeline and the home screen name the new trainer.
    payment_id = reallocated[0].correlation_id
    detail = client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
    assert detail["fulfilment"]["allocation"]["trainer"]["id"] == staying.id
    assert "TRAINER_REALLOCATED" in [e["type"] for e in detail["timeline"]]
    home = client.get(f"/api/v1/students/{moved[0].student_id}/home", headers=ADMIN).json
    assert {s["trainer"] for s in home["upcoming_sessions"]} == {staying.name}

    # Asked again (a redelivery, a second PATCH): nothing moves twice.
    assert patch(client, leaving.id, {"active": False}).json["reallocating"] == []
    assert len(events(db_session, EventType.TRAINER_REALLOCATED)) == 2


def test_where_the_new_trainer_is_busy_sessions_shift_and_the_timeline_says_so(
    db_session, client, eager, clock
):
    clock(MONDAY)
    course = make_course(db_session)
    leaving = make_trainer(db_session, [course])
    busy = make_trainer(db_session, [course])
    busy.is_active = False  # the first student goes to the leaving trainer...
    mine = make_allocation(db_session, course, tier=10, slot=time(9), now=MONDAY)
    busy.is_active, leaving.is_active = True, False  # ...the second to the other one
    theirs = make_allocation(db_session, course, tier=10, slot=time(9, 30), now=MONDAY)
    leaving.is_active = True
    db_session.flush()
    assert patch(client, leaving.id, {"active": False}).status_code == 200
    db_session.refresh(mine)
    assert mine.trainer_id == busy.id  # the only one left, though busy at 09:30
    shifts = events(db_session, EventType.SESSION_SHIFTED)
    assert len(shifts) == 7
    assert {e.payload["reason"] for e in shifts} == {"trainer_changed"}
    mine_sessions = future(db_session, mine.id, MONDAY)
    assert len(mine_sessions) == 7  # none lost
    theirs_last = future(db_session, theirs.id, MONDAY)[-1].scheduled_date
    assert all(s.scheduled_date > theirs_last for s in mine_sessions)


def test_shrinking_hours_moves_only_the_students_outside_them(db_session, client, eager, clock):
    clock(MONDAY)
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course], working_hours=DEFAULT_WORKING_DAYS)  # UTC
    other = make_trainer(db_session, [course])
    other.is_active = False
    morning = make_allocation(db_session, course, slot=time(9), now=MONDAY)
    evening = make_allocation(db_session, course, slot=time(17), now=MONDAY)
    other.is_active = True
    db_session.flush()  # the API's own session shares the connection, not this session
    weekdays = {
        day: {"starts": "12:00", "ends": "20:00"} for day in ("mon", "tue", "wed", "thu", "fri")
    }
    answer = patch(client, trainer.id, {"working_hours": weekdays})
    assert answer.json["reallocating"] == [morning.id]
    db_session.refresh(morning)
    db_session.refresh(evening)
    assert (morning.trainer_id, evening.trainer_id) == (other.id, trainer.id)


def test_no_trainer_free_parks_the_move_and_a_replay_finishes_it(db_session, client, eager, clock):
    clock(MONDAY)
    celery_app.conf.task_eager_propagates = False  # fail as a worker would (fixture resets)
    course = make_course(db_session)
    leaving = make_trainer(db_session, [course])
    allocation = make_allocation(db_session, course, slot=time(17, 30), now=MONDAY)
    assert patch(client, leaving.id, {"active": False}).status_code == 200
    letter = db_session.scalars(select(DeadLetter)).one()
    assert letter.task_name == "tutorflow.pipeline.reallocate_trainer"
    assert letter.exception_type == "domain.errors.NoTrainerAvailable"
    db_session.refresh(allocation)
    assert allocation.trainer_id == leaving.id  # nothing lost meanwhile
    assert len(future(db_session, allocation.id, MONDAY)) == 7

    newcomer = make_trainer(db_session, [course])
    replay = client.post(f"/api/v1/admin/dead-letters/{letter.id}/replay", headers=ADMIN)
    assert replay.status_code == 200
    db_session.refresh(allocation)
    assert allocation.trainer_id == newcomer.id
    assert (
        db_session.scalar(
            select(func.count()).where(
                TutoringSession.allocation_id == allocation.id,
                TutoringSession.trainer_id == newcomer.id,
                TutoringSession.status == "scheduled",
            )
        )
        == 7
    )
