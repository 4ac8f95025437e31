"""What a confirmed payment turns into: a purchase, a trainer allocation, sessions."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    SmallInteger,
    String,
    Time,
    UniqueConstraint,
    column,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import UUID, ExcludeConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_at_column


class Purchase(Base):
    __tablename__ = "student_course_purchases"
    __table_args__ = (
        # A student holds a course at most once at a time.
        Index(
            "uq_purchases_active_student_course",
            "student_id",
            "course_id",
            unique=True,
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("payments.id"), unique=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id"), index=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    tier: Mapped[int] = mapped_column(SmallInteger)
    time_slot: Mapped[time] = mapped_column(Time)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=true())
    created_at: Mapped[datetime] = created_at_column()
    deactivated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AllocationStatus(StrEnum):
    APPROVED = "approved"  # trainer chosen, no session scheduled yet
    ACTIVE = "active"  # sessions on the calendar
    # Its trainer left and nobody could take it: no trainer place, no future session;
    # moved as soon as a trainer is free, refunded after ALLOCATION_GIVE_UP_HOURS.
    WAITING = "waiting"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


HOLDING_STATUSES = (AllocationStatus.APPROVED, AllocationStatus.ACTIVE)


class Allocation(Base):
    __tablename__ = "trainer_allocations"
    __table_args__ = (
        CheckConstraint(
            "status IN ('approved', 'active', 'waiting', 'completed', 'cancelled')",
            name="status_known",
        ),
        # The allocations waiting for a trainer of a course (woken when one is free).
        Index(
            "ix_allocations_waiting_course",
            "course_id",
            postgresql_where=text("status = 'waiting'"),
        ),
        # One live allocation per student and course.
        Index(
            "uq_allocations_live_student_course",
            "student_id",
            "course_id",
            unique=True,
            postgresql_where=text("status IN ('approved', 'active')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("student_course_purchases.id"), unique=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id"))
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    trainer_id: Mapped[int] = mapped_column(ForeignKey("trainers.id"), index=True)
    time_slot: Mapped[time] = mapped_column(Time)
    sessions_total: Mapped[int] = mapped_column(SmallInteger)
    status: Mapped[str] = mapped_column(String(16), server_default=AllocationStatus.APPROVED)
    created_at: Mapped[datetime] = created_at_column()
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Since when it waits for a trainer (status waiting): the give-up refund counts from it.
    waiting_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SessionStatus(StrEnum):
    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class TutoringSession(Base):
    __tablename__ = "tutoring_sessions"
    __table_args__ = (
        CheckConstraint("status IN ('scheduled', 'completed', 'cancelled')", name="status_known"),
        UniqueConstraint(
            "allocation_id", "scheduled_date", "scheduled_time", name="uq_sessions_allocation_slot"
        ),
        CheckConstraint("starts_at < ends_at", name="starts_before_ends"),
        # DESIGN invariant 4, held by PostgreSQL: no two scheduled sessions of one
        # trainer overlap in time, whatever zones their students live in.
        ExcludeConstraint(
            ("trainer_id", "="),
            (func.tstzrange(column("starts_at"), column("ends_at")), "&&"),
            name="ex_sessions_trainer_overlap",
            using="gist",
            where=text("status = 'scheduled'"),
        ),
        Index("ix_sessions_student_starts_at", "student_id", "starts_at"),
        # A trainer's booked time from now on (domain.bookings), for one trainer or many.
        Index(
            "ix_sessions_trainer_scheduled_ends_at",
            "trainer_id",
            "ends_at",
            postgresql_where=text("status = 'scheduled'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    allocation_id: Mapped[int] = mapped_column(ForeignKey("trainer_allocations.id"))
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id"))
    trainer_id: Mapped[int] = mapped_column(ForeignKey("trainers.id"))
    # Local date and time in the student's timezone, as the student sees them...
    scheduled_date: Mapped[date] = mapped_column(Date)
    scheduled_time: Mapped[time] = mapped_column(Time)
    # ...and the instants, the truth: "is it in the future", trainer clashes across zones.
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), server_default=SessionStatus.SCHEDULED)
    created_at: Mapped[datetime] = created_at_column()


class HoldStatus(StrEnum):
    HELD = "held"  # a trainer's place, counted until `expires_at`
    CONVERTED = "converted"  # became the payment's allocation
    RELEASED = "released"  # expired, the provider was unreachable, or lost to a refusal


class Hold(Base):
    """A trainer's place at a weekly local time, taken by a checkout for the tier's whole
    span (the student's first `sessions` weekdays after `starts_after`, at `time_slot` in
    `timezone`, each `session_minutes` long) until `expires_at`; the allocation step turns
    it into the allocation. Placed before the payment row exists (the provider is asked
    in between), so `payment_id` names the payment to be, without a foreign key.

    Availability and every checkout count a hold while it is `held` and not expired:
    a trainer's places are `max_students - active_students - live holds`, and a hold's
    sessions are booked time. Checkouts place holds under the trainer's row lock, so two
    cannot take the last place."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("status IN ('held', 'converted', 'released')", name="status_known"),
        CheckConstraint("sessions > 0", name="sessions_positive"),
        # The live holds of a trainer (capacity and booked time at every checkout).
        Index(
            "ix_holds_trainer_held",
            "trainer_id",
            "expires_at",
            postgresql_where=text("status = 'held'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id"))
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    trainer_id: Mapped[int] = mapped_column(ForeignKey("trainers.id"))
    time_slot: Mapped[time] = mapped_column(Time)
    timezone: Mapped[str] = mapped_column(String(64))
    session_minutes: Mapped[int] = mapped_column(SmallInteger)
    sessions: Mapped[int] = mapped_column(SmallInteger)
    starts_after: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), server_default=HoldStatus.HELD)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at_column()
