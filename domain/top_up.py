"""The rolling session window, kept full by beat: set-based, in batches.

Each batch locks up to `limit` active allocations (`FOR UPDATE SKIP LOCKED`: one the
chain is scheduling right now, or another top-up holds, is skipped and left to it),
reads their session counts in the same statement, plans the missing sessions with the
same calendar rules as the chain, and writes them with one multi-row INSERT. An
allocation whose tier is used up and has no future session left is completed: its
purchase becomes inactive and its trainer's place is freed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from domain.calendar import plan_sessions, sessions_needed
from domain.events import EventType
from models import (
    Allocation,
    AllocationStatus,
    Purchase,
    Trainer,
    WrittenEvent,
    note_events,
)

_BATCH = text(
    """
    WITH batch AS (
        SELECT id FROM trainer_allocations
        WHERE status = 'active' AND id > :after
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    SELECT a.id, a.student_id, a.trainer_id, a.purchase_id, a.time_slot, a.sessions_total,
           s.timezone, p.payment_id, stats.used, stats.future, stats.last_date
    FROM batch
    JOIN trainer_allocations a ON a.id = batch.id
    JOIN students s ON s.id = a.student_id
    JOIN student_course_purchases p ON p.id = a.purchase_id
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE t.status <> 'cancelled') AS used,
               count(*) FILTER (WHERE t.status = 'scheduled' AND t.starts_at > :now) AS future,
               max(t.scheduled_date) AS last_date
        FROM tutoring_sessions t
        WHERE t.allocation_id = a.id
    ) stats
    ORDER BY a.id
    """
)


# Column arrays, unnested by the server: one round trip and no per-row bind processing.
_INSERT_SESSIONS = text(
    """
    INSERT INTO tutoring_sessions
        (allocation_id, student_id, trainer_id, scheduled_date, scheduled_time, starts_at)
    SELECT * FROM unnest(CAST(:allocation_id AS bigint[]), CAST(:student_id AS bigint[]),
                         CAST(:trainer_id AS bigint[]), CAST(:scheduled_date AS date[]),
                         CAST(:scheduled_time AS time[]), CAST(:starts_at AS timestamptz[]))
    ON CONFLICT DO NOTHING
    RETURNING allocation_id
    """
)
_INSERT_EVENTS = text(
    """
    INSERT INTO domain_events (correlation_id, student_id, event_type, payload)
    SELECT * FROM unnest(CAST(:correlation_id AS uuid[]), CAST(:student_id AS bigint[]),
                         CAST(:event_type AS text[]), CAST(:payload AS jsonb[]))
    """
)


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
) -> tuple[TopUpReport, int | None]:
    """One batch in the caller's transaction; returns its report and the last id seen
    (None when there is nothing after `after_id`)."""
    rows = session.execute(_BATCH, {"now": now, "after": after_id, "limit": limit}).all()
    report = TopUpReport(allocations_seen=len(rows))
    if not rows:
        return report, None

    new_sessions: list[dict] = []
    events: list[dict] = []
    completed = []
    for row in rows:
        if row.used >= row.sessions_total and row.future == 0:
            completed.append(row)
            continue
        if row.future >= threshold:
            continue
        count = sessions_needed(
            future=row.future, used=row.used, total=row.sessions_total, window=window
        )
        planned = plan_sessions(
            now=now, timezone=row.timezone, slot=row.time_slot, count=count,
            last_scheduled=row.last_date,
        )  # fmt: skip
        if not planned:
            continue
        new_sessions.extend(
            {
                "allocation_id": row.id,
                "student_id": row.student_id,
                "trainer_id": row.trainer_id,
                "scheduled_date": p.scheduled_date,
                "scheduled_time": p.scheduled_time,
                "starts_at": p.starts_at,
            }
            for p in planned
        )
        events.append(
            _event(row, EventType.SESSIONS_GENERATED, count=len(planned), source="top_up")
        )
    if new_sessions:
        inserted = session.scalars(
            _INSERT_SESSIONS, {k: [row[k] for row in new_sessions] for k in new_sessions[0]}
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
                "correlation_id": [str(e["correlation_id"]) for e in events],
                "student_id": [e["student_id"] for e in events],
                "event_type": [str(e["event_type"]) for e in events],
                "payload": [json.dumps(e["payload"]) for e in events],
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
    return report, rows[-1].id


def _event(row, event_type: EventType, **payload) -> dict:
    return {
        "correlation_id": row.payment_id,
        "student_id": row.student_id,
        "event_type": event_type,
        "payload": {"allocation_id": row.id, **payload},
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
