"""Students move and cancel their own sessions, at least 24 hours ahead; the trainer's
hours and bookings (and in the end the exclusion constraint) decide what is free."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest
from sqlalchemy import func, select

from domain.calendar import DEFAULT_WORKING_DAYS
from domain.events import EventType
from models import DomainEvent, TutoringSession
from tests.conftest import ADMIN, student_auth
from tests.factories import make_course, make_trainer
from tests.test_beat import MONDAY, allocate, future, top_up_all

UTC_OFFSET = "+00:00"


def url(session_id: int, action: str) -> str:
    return f"/api/v1/sessions/{session_id}/{action}"


def events(db_session, event_type: EventType) -> int:
    return db_session.scalar(select(func.count()).where(DomainEvent.event_type == event_type))


def booked(db_session, allocation) -> list[tuple[datetime, datetime]]:
    return [(s.starts_at, s.ends_at) for s in future(db_session, allocation.id, MONDAY)]


def test_a_student_moves_their_session_to_a_free_time(db_session, client, clock):
    clock(MONDAY)  # Monday 12:00 UTC; the first session is Tuesday 17:30 Berlin
    allocation = allocate(db_session, timezone="Europe/Berlin", slot=time(17, 30))
    second = future(db_session, allocation.id, MONDAY)[1]  # Wednesday 16:30 UTC
    answer = client.post(
        url(second.id, "reschedule"),
        json={"starts_at": "2026-11-25T09:00:00+01:00"},
        headers=student_auth(allocation.student_id),
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["starts_at"] == f"2026-11-25T08:00:00{UTC_OFFSET}"
    assert answer.json["ends_at"] == f"2026-11-25T09:00:00{UTC_OFFSET}"
    assert (answer.json["date"], answer.json["time"]) == ("2026-11-25", "09:00")  # Berlin
    assert events(db_session, EventType.SESSION_RESCHEDULED) == 1


def test_moves_too_late_outside_hours_or_onto_a_booking_are_409_and_change_nothing(
    db_session, client, clock
):
    clock(MONDAY)
    course = make_course(db_session)
    trainer = make_trainer(db_session, [course], working_hours=DEFAULT_WORKING_DAYS)  # UTC
    mine = allocate(db_session, timezone="UTC", slot=time(9, 0), trainer=trainer)
    theirs = allocate(db_session, timezone="UTC", slot=time(11, 0), trainer=trainer)
    before = booked(db_session, mine)
    third = future(db_session, mine.id, MONDAY)[2]  # Thursday 09:00
    headers = student_auth(mine.student_id)
    refused = {
        "too_late": "2026-11-24T10:00:00Z",  # 22 hours ahead
        "outside_working_hours": "2026-11-28T10:00:00Z",  # a Saturday
        "slot_taken": "2026-11-26T10:30:00Z",  # the other student's 11:00 that day
    }
    for code, starts_at in refused.items():
        answer = client.post(
            url(third.id, "reschedule"), json={"starts_at": starts_at}, headers=headers
        )
        assert (answer.status_code, answer.json["error"]["code"]) == (409, code), starts_at
    assert booked(db_session, mine) == before
    assert len(booked(db_session, theirs)) == 7

    # A session that starts within 24 hours cannot be moved at all.
    clock(MONDAY + timedelta(hours=12))  # Tuesday 00:00; the first is at 09:00
    first = future(db_session, mine.id, MONDAY)[0]
    answer = client.post(
        url(first.id, "reschedule"), json={"starts_at": "2026-12-01T12:00:00Z"}, headers=headers
    )
    assert (answer.status_code, answer.json["error"]["code"]) == (409, "too_late")


def test_a_student_cannot_touch_another_students_session(db_session, client, clock):
    clock(MONDAY)
    allocation = allocate(db_session)
    other = allocate(db_session)
    target = future(db_session, allocation.id, MONDAY)[3]
    for action, body in (("reschedule", {"starts_at": "2026-12-03T12:00:00Z"}), ("cancel", None)):
        answer = client.post(
            url(target.id, action), json=body, headers=student_auth(other.student_id)
        )
        assert answer.status_code == 404  # not 403: ids cannot be probed
    assert client.post(url(target.id, "cancel")).status_code == 401
    assert db_session.get(TutoringSession, target.id).status == "scheduled"


def test_a_start_without_an_offset_is_422(db_session, client, clock):
    clock(MONDAY)
    allocation = allocate(db_session)
    target = future(db_session, allocation.id, MONDAY)[3]
    answer = client.post(
        url(target.id, "reschedule"),
        json={"starts_at": "2026-12-03T12:00:00"},
        headers=student_auth(allocation.student_id),
    )
    assert answer.status_code == 422
    assert "starts_at" in str(answer.json)


def test_a_student_cancels_24_hours_ahead_and_the_top_up_replaces_it(db_session, client, clock):
    clock(MONDAY)
    allocation = allocate(db_session, tier=10, timezone="UTC", slot=time(9, 0))
    first, second = future(db_session, allocation.id, MONDAY)[:2]  # Tue, Wed 09:00
    headers = student_auth(allocation.student_id)
    late = client.post(url(first.id, "cancel"), headers=headers)  # 21 hours ahead
    assert (late.status_code, late.json["error"]["code"]) == (409, "too_late")
    answer = client.post(url(second.id, "cancel"), headers=headers)
    assert (answer.status_code, answer.json["status"]) == (200, "cancelled")
    assert len(future(db_session, allocation.id, MONDAY)) == 6
    assert top_up_all(db_session, MONDAY).sessions_created == 1  # within the tier of 10
    assert len(future(db_session, allocation.id, MONDAY)) == 7
    # An operator may still cancel the one within 24 hours.
    assert client.post(url(first.id, "cancel"), headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    "edge", ["0001-01-01T00:17:01+00:37", "9999-12-31T23:59:59-00:30"], ids=["year 1", "9999"]
)
def test_a_valid_start_beyond_the_range_in_utc_is_judged_as_a_time_not_refused_as_malformed(
    db_session, client, clock, edge
):
    # Well-formed date-times (schemathesis found the first): the earliest or latest
    # instant there is, a move the rules refuse (409), never a 422 nor a 500.
    clock(MONDAY)
    allocation = allocate(db_session, timezone="America/New_York")
    target = future(db_session, allocation.id, MONDAY)[3]
    answer = client.post(
        url(target.id, "reschedule"),
        json={"starts_at": edge},
        headers=student_auth(allocation.student_id),
    )
    assert answer.status_code == 409, answer.json
    assert db_session.get(type(target), target.id).starts_at == target.starts_at
