"""E-mails owed to students and trainers: one row per thing that happened and recipient.

The row is written in the same transaction as the change it tells of (domain.
notifications), with its subject and body already rendered (what was true then), and
its UNIQUE key (kind, recipient, correlation id, occasion) makes a second write of the
same news a no-op: a redelivered step, a replay or a second top-up never owes the same
e-mail twice. The send task (tasks/notifications.py) moves it pending → sending → sent.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_at_column


class NotificationKind(StrEnum):
    SESSIONS_BOOKED = "sessions_booked"  # student: the first sessions, in their zone
    NEW_STUDENT = "new_student"  # trainer: a student was allocated (or moved) to them
    SESSION_RESCHEDULED = "session_rescheduled"  # student and trainer
    SESSIONS_SHIFTED = "sessions_shifted"  # student: a planned date taken, the next used
    TRAINER_CHANGED = "trainer_changed"  # student: reallocated to another trainer
    REFUNDED = "refunded"  # student: refunded, future sessions cancelled
    WAITING_FOR_TRAINER = "waiting_for_trainer"  # student: the trainer left, nobody free yet


class NotificationStatus(StrEnum):
    PENDING = "pending"  # never tried
    # An attempt is under way, or its worker died: the server may or may not have the
    # message (docs/guarantees.md, "Notifications": the next attempt sends it again, same
    # Message-ID).
    SENDING = "sending"
    RETRYING = "retrying"  # the last attempt failed before the server took it
    SENT = "sent"  # the server took it (its 250 after DATA), and that was committed
    FAILED = "failed"  # refused for good or retries spent: dead-lettered


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint(
            "kind", "recipient", "correlation_id", "occasion", name="uq_notifications_key"
        ),
        CheckConstraint(
            "status IN ('pending', 'sending', 'retrying', 'sent', 'failed')",
            name="status_known",
        ),
        Index("ix_notifications_correlation", "correlation_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(254))  # the e-mail address
    # The payment it is about (its timeline's correlation id).
    correlation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    # Which event of that kind, for kinds that happen more than once per payment (a
    # reschedule: the session and its new time); '' for once-per-payment kinds.
    occasion: Mapped[str] = mapped_column(String(200), server_default="")
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    # Derived from the unique key: every attempt sends the same Message-ID.
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16), server_default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
