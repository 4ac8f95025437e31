"""Domain events (a payment's timeline), the outbox and the consumers' inbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from core.tracing import current_trace_id, current_traceparent
from models.base import Base, created_at_column

# The payload key of an event's trace id (when tracing is on): the timeline names the
# trace that holds the spans of the step that wrote it.
TRACE_ID = "trace_id"


class OutboxKind(StrEnum):
    """What an outbox message asks the broker for (tasks.handoff publishes each)."""

    START_PIPELINE = "start_pipeline"
    START_COMPENSATION = "start_compensation"
    REPLAY_DEAD_LETTER = "replay_dead_letter"
    REALLOCATE = "reallocate"  # an allocation whose trainer can no longer serve it
    SEND_NOTIFICATION = "send_notification"  # one change's e-mails (models.notifications)
    # A paid checkout no trainer can serve: refund it at the provider, then compensate.
    REFUND_UNSERVABLE = "refund_unservable"
    # A letter was replayed or discarded: take its message out of the dead_letter queue.
    SETTLE_DEAD_LETTERS = "settle_dead_letters"


class DomainEvent(Base):
    """Written in the same transaction as the state change it records."""

    __tablename__ = "domain_events"
    __table_args__ = (
        Index("ix_domain_events_correlation", "correlation_id", "id"),
        Index("ix_domain_events_student", "student_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    correlation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    student_id: Mapped[int | None] = mapped_column(ForeignKey("students.id"))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    occurred_at: Mapped[datetime] = created_at_column()


class OutboxMessage(Base):
    """A hand-off to the broker, committed with the change that calls for it.

    The API publishes it right after commit and stamps `published_at`; the beat relay
    re-publishes rows left unpublished (crash between commit and publish, broker down).
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unpublished",
            "next_attempt_at",
            postgresql_where=text("published_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    correlation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    # What to publish: an OutboxKind.
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = created_at_column()
    next_attempt_at: Mapped[datetime] = created_at_column()
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The W3C traceparent of the writing transaction: the relay continues that trace.
    # A column default, so every writer stamps it, ORM or Core (an INSERT ... SELECT
    # evaluates it once per statement), without knowing of tracing.
    traceparent: Mapped[str | None] = mapped_column(String(55), default=current_traceparent)


# Domain events written with SQL, several in one statement: `:events` is a JSON array of
# {correlation_id, student_id, event_type, payload} (events_parameter), inserted in its
# order, so the ids keep the order they were recorded in. A statement of its own, or a
# CTE of another (a step's record: domain.step_runs).
INSERT_EVENTS_SQL = (
    "INSERT INTO domain_events (correlation_id, student_id, event_type, payload)"
    " SELECT CAST(e.value->>'correlation_id' AS uuid), CAST(e.value->>'student_id' AS bigint),"
    " e.value->>'event_type', e.value->'payload'"
    " FROM jsonb_array_elements(CAST(:events AS jsonb)) WITH ORDINALITY AS e(value, n)"
    " ORDER BY e.n"
)


def events_parameter(events: Iterable[Mapping[str, Any]]) -> str:
    """INSERT_EVENTS_SQL's `:events`."""
    return json.dumps(list(events))


def traced(payload: dict[str, Any]) -> dict[str, Any]:
    """The event payload with the active trace's id, for writers that insert events
    with SQL; ORM-added events get it at flush."""
    trace_id = current_trace_id()
    return payload if trace_id is None else {**payload, TRACE_ID: trace_id}


@event.listens_for(DomainEvent, "before_insert")
def _stamp_trace_id(_mapper: object, _connection: object, target: DomainEvent) -> None:
    trace_id = current_trace_id()
    if trace_id is not None:
        target.payload = {**(target.payload or {}), TRACE_ID: trace_id}


class ProcessedEvent(Base):
    """The inbox: one row per (consumer, correlation id, consumed event).

    Written last in the same transaction as the step's effect, with the step's result,
    so a redelivered message finds it, rolls its own effect back and returns that
    result (domain.inbox).
    """

    __tablename__ = "processed_events"
    __table_args__ = (
        UniqueConstraint("consumer", "correlation_id", "event_type", name="uq_processed_events"),
        Index("ix_processed_events_processed_at", "processed_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(128))
    correlation_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    result: Mapped[Any] = mapped_column(JSONB, nullable=True)
    processed_at: Mapped[datetime] = created_at_column()


class StepRun(Base):
    """One committed run of a pipeline step: which task (its Celery id, what Flower
    shows it by), when it started and committed, in which trace. Written in the step's
    own transaction, so a run that failed or rolled back leaves none (its retries are
    on the timeline, its last failure in a dead letter). The operator's payment page
    reads them (domain.operator_view); like the timeline, they are kept."""

    __tablename__ = "step_runs"
    __table_args__ = (Index("ix_step_runs_correlation", "correlation_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    correlation_id: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(255))  # the task's name
    task_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    trace_id: Mapped[str | None] = mapped_column(String(32))
