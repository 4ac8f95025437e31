"""Tasks that spent their retries (or failed for good), parked for an operator."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base


class DeadLetterStatus(StrEnum):
    OPEN = "open"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


class FailureKind(StrEnum):
    """What kind of failure parked a letter, decided where the error was caught: what a
    student reads about it (domain.errors.safe_reason) and whether it is a fault at all
    (no trainer free yet is a wait, not a fault: domain.read_models)."""

    NO_TRAINER = "no_trainer"
    NOT_SETTLED = "not_settled"
    SERVICE_UNAVAILABLE = "service_unavailable"
    NEEDS_OPERATOR = "needs_operator"
    DATABASE_UNAVAILABLE = "database_unavailable"
    CONFLICT = "conflict"
    BROKER_UNAVAILABLE = "broker_unavailable"
    TOO_SLOW = "too_slow"
    # A poison message: the process running the step died (SIGKILL: out of memory, a
    # crash in a C library) as many times as POISON_WORKER_LOSSES allows (tasks/poison.py).
    WORKER_LOST = "worker_lost"
    UNEXPECTED = "unexpected"


FAILURE_KINDS = ", ".join(f"'{kind}'" for kind in FailureKind)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'replayed', 'discarded')", name="status_known"),
        CheckConstraint(f"failure_kind IN ({FAILURE_KINDS})", name="failure_kind_known"),
        Index("ix_dead_letters_status_id", "status", "id"),
        Index("ix_dead_letters_correlation", "correlation_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # The failed task's id: a redelivered failure updates its dead letter, never adds one.
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    task_name: Mapped[str] = mapped_column(String(255))
    # What a replay hands back to the workers, as they wrote it (the task, its arguments,
    # the links of its chain that had not run): stored, never read, below the workers.
    redelivery: Mapped[dict[str, Any]] = mapped_column(JSONB)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    failure_kind: Mapped[str] = mapped_column(String(32))
    exception_type: Mapped[str] = mapped_column(String(255))
    exception_message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str] = mapped_column(Text)
    retries: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), server_default=DeadLetterStatus.OPEN)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replay_task_id: Mapped[str | None] = mapped_column(String(64))
    # The letter whose replay failed again and parked this one.
    replay_of: Mapped[int | None] = mapped_column(
        ForeignKey("dead_letters.id", ondelete="SET NULL")
    )
    # The letters this one's replays parked: a replay of a cause not yet fixed.
    failed_replays: Mapped[list[DeadLetter]] = relationship(
        lazy="selectin", join_depth=1, order_by="DeadLetter.id", viewonly=True
    )

    @property
    def failed_again_as(self) -> list[int]:
        return [letter.id for letter in self.failed_replays]
