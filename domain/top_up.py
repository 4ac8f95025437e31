"""The rolling session window, kept full by beat: set-based, in batches.

Each batch locks up to `limit` active allocations (`FOR UPDATE SKIP LOCKED`: one the
chain is scheduling right now, or another top-up holds, is skipped and left to it),
then reads their session counts (once locked: see _rows_statement), locks their
trainers and reads their busy instants, plans the missing sessions with the chain's own
planner (calendar.plan_window: a clash moves a session to the next free weekday, with a
SESSION_SHIFTED event, never drops it), and writes them with one multi-row INSERT. An
allocation whose tier is used up and has no future session left is completed: its
purchase becomes inactive and its trainer's place is freed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Date,
    DateTime,
    Select,
    String,
    Table,
    Time,
    and_,
    any_,
    bindparam,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, aliased

from domain import notifications
from domain.bookings import trainer_calendars
from domain.calendar import plan_window, sessions_needed
from domain.events import EventType
from domain.fulfilment import session_rows, shift_payload
from models import (
    Allocation,
    AllocationStatus,
    Course,
    DomainEvent,
    Purchase,
    SessionStatus,
    Student,
    Trainer,
    TutoringSession,
    WrittenEvent,
    note_events,
    traced,
)


def _lock_statement() -> Select[Any]:
    """Up to :limit active allocations after :after whose trainer is in shard :shard of
    :shards, locked (SKIP LOCKED: one the chain or another top-up holds is left to it)."""
    return (
        select(Allocation.id)
        .where(
            Allocation.status == AllocationStatus.ACTIVE,
            Allocation.id > bindparam("after"),
            Allocation.trainer_id % bindparam("shards") == bindparam("shard"),
        )
        .order_by(Allocation.id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )


def _looked_up(column: Any, key: ColumnElement[bool]) -> Any:
    """`column` of the one row `key` finds (its primary key), under the column's name."""
    return select(column).where(key).scalar_subquery().label(column.key)


def _rows_statement() -> Select[Any]:
    """The locked allocations (:ids) with their session counts.

    A statement of its own, after the lock, not a part of it: a statement reads from
    the snapshot it started with, and a top-up running beside this one may commit its
    sessions and release an allocation between that start and the moment this one
    locks it. Counted in the locking statement, those sessions were unseen, and the
    allocation got a second window (two concurrent top-ups: 12 future sessions for 7,
    tests/test_beat.py). Started once the locks are held, this snapshot sees every
    commit of whoever held them.

    The student's zone, the course's length and the purchase's payment come by one
    primary-key lookup each per allocation (scalar subqueries), not by joins: joined,
    PostgreSQL hashes whole tables once they are small enough beside a batch (every
    student and every purchase ever made: 100,000 of each read for 1,000 allocations,
    bench/volume.py), so a batch cost more as the history grew."""
    held = aliased(TutoringSession)
    stats = (
        select(
            func.count().filter(held.status != SessionStatus.CANCELLED).label("used"),
            func.count()
            .filter(and_(held.status == SessionStatus.SCHEDULED, held.starts_at > bindparam("now")))
            .label("future"),
            func.max(held.scheduled_date).label("last_date"),
        )
        .where(held.allocation_id == Allocation.id)
        .lateral("stats")
    )
    return (
        select(
            Allocation.id,
            Allocation.student_id,
            Allocation.trainer_id,
            Allocation.purchase_id,
            Allocation.time_slot,
            Allocation.sessions_total,
            _looked_up(Student.timezone, Student.id == Allocation.student_id),
            _looked_up(Course.session_minutes, Course.id == Allocation.course_id),
            _looked_up(Purchase.payment_id, Purchase.id == Allocation.purchase_id),
            stats.c.used,
            stats.c.future,
            stats.c.last_date,
        )
        .select_from(Allocation)
        .join(stats, true())
        .where(Allocation.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
        .order_by(Allocation.id)
    )


def _unnest(column: str, element: Any) -> Any:
    """A column array sent as one parameter (named after the column, plural: a
    parameter named like a column would be taken for its value) and unnested by the
    server: one round trip and no per-row bind processing."""
    return func.unnest(bindparam(f"{column}s", type_=ARRAY(element)))


_LOCK_BATCH = _lock_statement()
_BATCH_ROWS = _rows_statement()
# The tables, not the mapped classes: an INSERT … SELECT is no ORM bulk insert.
SESSIONS = cast(Table, TutoringSession.__table__)
EVENTS = cast(Table, DomainEvent.__table__)
# The trainers' rows are locked and their booked intervals known
# (bookings.trainer_calendars), so a trainer clash cannot happen here (the exclusion
# constraint would refuse it); ON CONFLICT covers only the allocation's own date and
# time (a session already there).
_INSERT_SESSIONS = (
    pg_insert(SESSIONS)
    .from_select(
        [
            TutoringSession.allocation_id,
            TutoringSession.student_id,
            TutoringSession.trainer_id,
            TutoringSession.scheduled_date,
            TutoringSession.scheduled_time,
            TutoringSession.starts_at,
            TutoringSession.ends_at,
        ],
        select(
            _unnest("allocation_id", BigInteger()),
            _unnest("student_id", BigInteger()),
            _unnest("trainer_id", BigInteger()),
            _unnest("scheduled_date", Date()),
            _unnest("scheduled_time", Time()),
            _unnest("starts_at", DateTime(timezone=True)),
            _unnest("ends_at", DateTime(timezone=True)),
        ),
    )
    .on_conflict_do_nothing(constraint="uq_sessions_allocation_slot")
    .returning(TutoringSession.allocation_id)
)
_INSERT_EVENTS = insert(EVENTS).from_select(
    ["correlation_id", "student_id", "event_type", "payload"],
    select(
        _unnest("correlation_id", UUID(as_uuid=False)),
        _unnest("student_id", BigInteger()),
        _unnest("event_type", String()),
        _unnest("payload", JSONB()),
    ),
)


@dataclass(frozen=True)
class Shard:
    """The allocations of one trainer in every `of`: side-by-side top-ups given
    different shards never wait for each other's trainer locks (allocation id ranges
    would: two batches of a thousand allocations share trainers)."""

    index: int = 0
    of: int = 1


@dataclass
class TopUpReport:
    allocations_seen: int = 0
    allocations_topped_up: int = 0
    sessions_created: int = 0
    allocations_completed: int = 0

    def add(self, other: TopUpReport) -> None:
        self.allocations_seen += other.allocations_seen
        self.allocations_topped_up += other.allocations_topped_up
        self.sessions_created += other.sessions_created
        self.allocations_completed += other.allocations_completed


def top_up_batch(
    session: Session,
    *,
    now: datetime,
    after_id: int,
    limit: int,
    window: int,
    threshold: int,
    shard: Shard = Shard(),
) -> tuple[TopUpReport, int | None]:
    """One batch of `shard` in the caller's transaction; returns its report and the last
    id seen (None when there is nothing after `after_id`)."""
    ids = session.scalars(
        _LOCK_BATCH,
        {"after": after_id, "shards": shard.of, "shard": shard.index, "limit": limit},
    ).all()
    if not ids:
        return TopUpReport(allocations_seen=0), None
    rows = session.execute(_BATCH_ROWS, {"ids": list(ids), "now": now}).all()
    report = TopUpReport(allocations_seen=len(rows))

    new_sessions: list[dict] = []
    events: list[dict] = []
    completed = []
    wanting = []  # allocations short of their window
    for row in rows:
        if row.used >= row.sessions_total and row.future == 0:
            completed.append(row)
            continue
        if row.future >= threshold:
            continue
        wanting.append(row)
    # Every trainer this batch writes to is locked here, in id order, before any write
    # (completions free a trainer's place too): batches running side by side then wait
    # for each other instead of deadlocking.
    calendars = trainer_calendars(
        session, [row.trainer_id for row in (*wanting, *completed)], now=now
    )
    for row in wanting:
        count = sessions_needed(
            future=row.future, used=row.used, total=row.sessions_total, window=window
        )
        plan = plan_window(
            now=now,
            timezone=row.timezone,
            slot=row.time_slot,
            minutes=row.session_minutes,
            count=count,
            last_scheduled=row.last_date,
            busy=calendars[row.trainer_id].busy,
            hours=calendars[row.trainer_id].hours,
        )
        planned = plan.sessions
        events.extend(
            _event(row, EventType.SESSION_SHIFTED, **shift_payload(row.id, shift))
            for shift in plan.shifts
        )
        notifications.sessions_shifted_notice(
            session,
            row.payment_id,
            student_id=row.student_id,
            allocation_id=row.id,
            slot=row.time_slot,
            shifts=plan.shifts,
        )
        if not planned:
            continue
        new_sessions.extend(session_rows(row.id, row.student_id, row.trainer_id, planned))
        events.append(
            _event(row, EventType.SESSIONS_GENERATED, count=len(planned), source="top_up")
        )
    if new_sessions:
        inserted = session.scalars(
            _INSERT_SESSIONS, {f"{k}s": [row[k] for row in new_sessions] for k in new_sessions[0]}
        ).all()
        report.sessions_created = len(inserted)
        report.allocations_topped_up = len(set(inserted))
    if completed:
        _complete(session, completed, now)
        report.allocations_completed = len(completed)
        events.extend(_event(row, EventType.ALLOCATION_COMPLETED) for row in completed)
    if events:
        session.execute(
            _INSERT_EVENTS,
            {
                "correlation_ids": [str(e["correlation_id"]) for e in events],
                "student_ids": [e["student_id"] for e in events],
                "event_types": [str(e["event_type"]) for e in events],
                "payloads": [e["payload"] for e in events],
            },
        )
        note_events(
            session,
            (
                WrittenEvent(
                    str(e["correlation_id"]), e["student_id"], e["event_type"], e["payload"]
                )
                for e in events
            ),
        )
    return report, ids[-1]


def _event(row, event_type: EventType, **payload) -> dict:
    return {
        "correlation_id": row.payment_id,
        "student_id": row.student_id,
        "event_type": event_type,
        "payload": traced({"allocation_id": row.id, **payload}),
    }


def _complete(session: Session, rows: list, now: datetime) -> None:
    ids = [row.id for row in rows]
    session.execute(
        update(Allocation)
        .where(Allocation.id.in_(ids))
        .values(status=AllocationStatus.COMPLETED, ended_at=now)
    )
    session.execute(
        update(Purchase)
        .where(Purchase.id.in_([row.purchase_id for row in rows]))
        .values(is_active=False, deactivated_at=now)
    )
    freed: dict[int, int] = {}
    for row in rows:
        freed[row.trainer_id] = freed.get(row.trainer_id, 0) + 1
    # One trainer at a time, in id order: concurrent batches cannot deadlock.
    for trainer_id in sorted(freed):
        session.execute(
            update(Trainer)
            .where(Trainer.id == trainer_id)
            .values(active_students=Trainer.active_students - freed[trainer_id])
        )
