"""GET /courses/{id}/availability over a course's calendar snapshot kept for
AVAILABILITY_SNAPSHOT_SECONDS: holds and places are read on every request, so a hold
counts at once; booked sessions and allocations may lag by the snapshot's age, and show
once it is older than the setting (judged against the domain clock, moved here, never
slept on); 0 reads everything on every request. A snapshot read at `now` gives exactly
offers' fresh answer (and test_availability_equivalence holds both to span_fits)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from actions.availability import course_availability
from app.runtime import EXTENSION
from core.config import Settings
from core.snapshots import Snapshots
from domain import availability
from tests.factories import make_allocation, make_course, make_student, make_trainer

NOW = datetime(2027, 6, 16, 12, 0, tzinfo=UTC)  # a Wednesday
EVENING = {weekday: (time(17, 0), time(18, 30)) for weekday in range(7)}
EVERY_DAY_8_TO_20 = {weekday: (time(8, 0), time(20, 0)) for weekday in range(7)}


def answer(database, snapshots, course_id: int, tier: int = 10) -> dict[str, int]:
    found = course_availability(database, snapshots, course_id=course_id, timezone="UTC", tier=tier)
    return {f"{offer.slot:%H:%M}": offer.places for offer in found["times"]}


def fresh(session, course_id: int, now: datetime, tier: int = 10) -> dict[str, int]:
    found = availability.offers(session, course_id=course_id, timezone="UTC", tier=tier, now=now)
    return {f"{offer.slot:%H:%M}": offer.places for offer in found}


def test_a_hold_placed_after_the_snapshot_counts_in_the_next_answer(db_session, database, clock):
    course = make_course(db_session)
    for _ in range(2):
        make_trainer(db_session, [course], timezone="UTC", working_hours=EVENING)
    student = make_student(db_session, timezone="UTC")
    snapshots: Snapshots[availability.CalendarSnapshot] = Snapshots(5)
    clock(NOW)
    assert answer(database, snapshots, course.id) == {"17:00": 2, "17:15": 2, "17:30": 2}

    availability.place_hold(
        db_session,
        payment_id=uuid.uuid4(),
        student_id=student.id,
        course_id=course.id,
        tier=10,
        slot=time(17, 30),
        now=NOW,
        hold_minutes=15,
    )
    db_session.flush()
    clock(NOW + timedelta(seconds=1))

    assert answer(database, snapshots, course.id) == {"17:00": 1, "17:15": 1, "17:30": 1}
    assert snapshots.reads == 1  # the same snapshot: the hold was read fresh
    assert answer(database, snapshots, course.id) == fresh(db_session, course.id, NOW)


def test_a_session_booked_after_the_snapshot_shows_once_the_snapshot_expires(
    db_session, database, clock
):
    course = make_course(db_session)
    make_trainer(
        db_session, [course], timezone="UTC", working_hours=EVERY_DAY_8_TO_20, max_students=3
    )
    snapshots: Snapshots[availability.CalendarSnapshot] = Snapshots(5)
    clock(NOW)
    before = answer(database, snapshots, course.id)
    assert "10:00" in before

    # Another student's allocation at 10:00, sessions booked and the rest projected.
    make_allocation(db_session, course, slot=time(10, 0), now=NOW, timezone="UTC", tier=10)
    later = NOW + timedelta(seconds=4.999)
    clock(later)
    assert "10:00" not in fresh(db_session, course.id, later)
    assert answer(database, snapshots, course.id) == before  # within the snapshot's life
    assert snapshots.reads == 1

    expired = NOW + timedelta(seconds=5)
    clock(expired)
    after = answer(database, snapshots, course.id)
    assert snapshots.reads == 2
    assert after == fresh(db_session, course.id, expired)
    assert "10:00" not in after and "11:00" in after


def test_zero_seconds_answers_from_what_is_booked_now(db_session, database, clock):
    course = make_course(db_session)
    make_trainer(
        db_session, [course], timezone="UTC", working_hours=EVERY_DAY_8_TO_20, max_students=3
    )
    snapshots: Snapshots[availability.CalendarSnapshot] = Snapshots(0)
    clock(NOW)
    assert "10:00" in answer(database, snapshots, course.id)
    make_allocation(db_session, course, slot=time(10, 0), now=NOW, timezone="UTC", tier=10)
    after = answer(database, snapshots, course.id)
    assert after == fresh(db_session, course.id, NOW)
    assert "10:00" not in after


def test_the_setting_and_each_apps_snapshots(app):
    assert Settings.from_env({}).availability_snapshot_seconds == 5
    off = Settings.from_env({"AVAILABILITY_SNAPSHOT_SECONDS": "0"})
    assert off.availability_snapshot_seconds == 0
    kept = app.extensions[EXTENSION].availability
    assert kept.seconds == app.extensions[EXTENSION].settings.availability_snapshot_seconds


def test_a_snapshot_reaches_as_far_as_any_tiers_span():
    """read_calendar_snapshot reads booked time up to snapshot_until: past the horizon of
    the longest tier's span, longest session, from the zones furthest ahead and behind,
    at any time of any day of the week."""
    zones = ["Pacific/Kiritimati", "Etc/GMT+12", "Pacific/Pago_Pago", "UTC", "Australia/Sydney"]
    for hour in range(0, 7 * 24, 5):
        now = NOW + timedelta(hours=hour)
        for zone in zones:
            spans = availability.grid_spans(zone, 240, max(availability.TIERS), now)
            assert spans.horizon is not None
            assert spans.horizon <= availability.snapshot_until(now), (now, zone)


@dataclass
class Taken:
    taken_at: datetime


def test_snapshots_are_kept_per_key_for_their_seconds_either_side():
    snapshots: Snapshots[Taken] = Snapshots(5)
    read_at: list[datetime] = []

    def reader(now: datetime):
        def read(previous: Taken | None) -> Taken:
            read_at.append(now)
            return Taken(now)

        return read

    for now in [NOW, NOW + timedelta(seconds=4.9), NOW - timedelta(seconds=4.9)]:
        assert snapshots.get(1, now, reader(now)).taken_at == NOW
    assert snapshots.get(2, NOW, reader(NOW)).taken_at == NOW  # another course: its own
    assert snapshots.get(1, NOW + timedelta(seconds=5), reader(NOW + timedelta(seconds=5)))
    assert snapshots.get(1, NOW - timedelta(seconds=1), reader(NOW - timedelta(seconds=1)))
    assert read_at == [
        NOW,
        NOW,
        NOW + timedelta(seconds=5),
        NOW - timedelta(seconds=1),  # a clock set back past the age: read again
    ]
    assert snapshots.reads == 4


def test_requests_arriving_during_a_read_wait_for_it_and_read_nothing():
    snapshots: Snapshots[Taken] = Snapshots(5)
    release = threading.Event()
    got: list[Taken] = []

    def read(previous: Taken | None) -> Taken:
        release.wait(10)
        return Taken(NOW)

    threads = [
        threading.Thread(target=lambda: got.append(snapshots.get(1, NOW, read))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(got) == 8 and len({id(snapshot) for snapshot in got}) == 1
    assert snapshots.reads == 1
