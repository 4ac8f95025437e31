"""Trainers change: capacity, hours, time zone, deactivation. Students a trainer can no
longer serve move to another trainer through the reallocation chain (eager here; the
burst with a real worker is in test_time_races.py)."""

from __future__ import annotations

from datetime import time, timedelta

from sqlalchemy import func, select

from domain.calendar import DEFAULT_WORKING_DAYS
from domain.events import EventType
from models import (
    DeadLetter,
    DomainEvent,
    Notification,
    Payment,
    Purchase,
    Trainer,
)
from tasks.beat import give_up_unallocated
from tests.conftest import ADMIN, celery_app
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


def test_no_trainer_free_leaves_a_truthful_wait_and_a_new_trainer_takes_it_unasked(
    db_session, client, eager, clock
):
    """Nobody can take the deactivated trainer's student: no dead letter, and nothing
    shown that nobody will teach — the future sessions are withdrawn, the payment says
    it waits for a trainer, the home screen too, and the student gets an e-mail. A
    trainer added later takes the student without an operator."""
    clock(MONDAY)
    course = make_course(db_session)
    leaving = make_trainer(db_session, [course])
    allocation = make_allocation(db_session, course, slot=time(17, 30), now=MONDAY)
    payment_id = db_session.get_one(Purchase, allocation.purchase_id).payment_id
    assert patch(client, leaving.id, {"active": False}).status_code == 200

    db_session.refresh(allocation)
    assert allocation.status == "waiting"
    assert future(db_session, allocation.id, MONDAY) == []
    db_session.refresh(leaving)
    assert leaving.active_students == 0
    assert db_session.scalar(select(func.count()).select_from(DeadLetter)) == 0
    detail = client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "waiting_for_trainer"
    assert detail["fulfilment"]["allocation"]["trainer"] is None
    assert detail["fulfilment"]["upcoming_sessions"] == []
    home = client.get(f"/api/v1/students/{allocation.student_id}/home", headers=ADMIN).json
    [course_shown] = home["active_courses"]
    assert (course_shown["status"], course_shown["trainer"]) == ("waiting", None)
    assert home["upcoming_sessions"] == []
    mail = db_session.scalars(
        select(Notification).where(Notification.kind == "waiting_for_trainer")
    ).one()
    assert "no other trainer is free" in mail.body and "17:30" in mail.body
    waits = events(db_session, EventType.ALLOCATION_WAITING)
    assert len(waits[0].payload["sessions_withdrawn"]) == 7

    newcomer = client.post(
        "/api/v1/trainers",
        json={
            "name": "Newcomer",
            "email": "newcomer@test.example",
            "max_students": 5,
            "course_ids": [course.id],
        },
        headers=ADMIN,
    )
    assert newcomer.status_code == 201, newcomer.json

    db_session.refresh(allocation)
    assert (allocation.status, allocation.trainer_id) == ("active", newcomer.json["id"])
    assert allocation.waiting_since is None
    booked = future(db_session, allocation.id, MONDAY)
    assert len(booked) == 7 and {s.trainer_id for s in booked} == {newcomer.json["id"]}
    detail = client.get(f"/api/v1/payments/{payment_id}", headers=ADMIN).json
    assert detail["fulfilment"]["state"] == "scheduled"
    assert (
        events(db_session, EventType.TRAINER_REALLOCATED)[-1].payload["to_trainer_id"]
        == (newcomer.json["id"])
    )


def test_a_reactivated_trainer_takes_back_the_student_who_waited(db_session, client, eager, clock):
    clock(MONDAY)
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course])
    allocation = make_allocation(db_session, course, slot=time(17, 30), now=MONDAY)
    assert patch(client, trainer.id, {"active": False}).status_code == 200
    db_session.refresh(allocation)
    assert allocation.status == "waiting"

    assert patch(client, trainer.id, {"active": True}).status_code == 200

    db_session.refresh(allocation)
    assert (allocation.status, allocation.trainer_id) == ("active", trainer.id)
    assert len(future(db_session, allocation.id, MONDAY)) == 7
    db_session.refresh(trainer)
    assert trainer.active_students == 1


def test_a_student_who_waits_too_long_is_refunded(db_session, client, eager, clock):
    clock(MONDAY)
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course])
    allocation = make_allocation(db_session, course, slot=time(17, 30), now=MONDAY)
    assert patch(client, trainer.id, {"active": False}).status_code == 200
    hours = celery_app.settings.allocation_give_up_hours
    clock(MONDAY + timedelta(hours=hours, minutes=1))

    assert give_up_unallocated.run() == {"refunded": 1}

    db_session.refresh(allocation)
    assert allocation.status == "cancelled"
    payment = db_session.get_one(
        Payment, db_session.get_one(Purchase, allocation.purchase_id).payment_id
    )
    db_session.refresh(payment)
    assert payment.status == "refunded"
    db_session.refresh(trainer)
    assert trainer.active_students == 0  # given back once
