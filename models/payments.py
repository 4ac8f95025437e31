"""Payments, the idempotency keys of checkout requests and the provider's webhook events."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    SmallInteger,
    String,
    Text,
    Time,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_at_column


class PaymentStatus(StrEnum):
    PENDING = "pending"  # checkout started; the student has not said they paid
    CONFIRMING = "confirming"  # the student (or the provider) said so: verifying
    SUCCEEDED = "succeeded"  # the provider confirmed it, for the catalogue price
    REFUNDED = "refunded"
    FAILED = "failed"


TIERS = (10, 20, 30)


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'confirming', 'succeeded', 'refunded', 'failed')",
            name="status_known",
        ),
        CheckConstraint("tier IN (10, 20, 30)", name="tier_known"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso"),
    )

    # A UUID: it is the correlation id of the whole pipeline and appears in URLs.
    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id"), index=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    tier: Mapped[int] = mapped_column(SmallInteger)
    # Wall-clock time in the student's timezone at which sessions take place.
    time_slot: Mapped[time] = mapped_column(Time)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), server_default=PaymentStatus.PENDING)
    provider_payment_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refunded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why the provider did not take the money (declined, canceled): operator-safe text.
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class IdempotencyKey(Base):
    """The stored answer to a `POST /payments` carrying an `Idempotency-Key`."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 of the canonical request body: same key with another body is refused.
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int] = mapped_column(SmallInteger)
    response_body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_at_column()


class WebhookEvent(Base):
    """Provider event ids already handled: a redelivered webhook is a no-op."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    payment_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    received_at: Mapped[datetime] = created_at_column()
