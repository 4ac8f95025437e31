"""Students, courses, trainers and what each trainer teaches."""

from __future__ import annotations

from datetime import datetime, time

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Integer,
    SmallInteger,
    String,
    Text,
    Time,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, created_at_column


class Student(Base):
    __tablename__ = "students"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    # IANA name, validated by the API; sessions are placed in this zone.
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = created_at_column()


class Course(Base):
    __tablename__ = "courses"
    __table_args__ = (
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso"),
        CheckConstraint("session_minutes BETWEEN 15 AND 240", name="session_minutes_range"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    # ISO 4217, upper case: every tier of a course is sold in one currency.
    currency: Mapped[str] = mapped_column(String(3), server_default="EUR")
    # How long each session of the course lasts: with its start, the interval a trainer
    # is booked for (the exclusion constraint on tutoring_sessions compares these).
    session_minutes: Mapped[int] = mapped_column(SmallInteger, server_default="60")
    created_at: Mapped[datetime] = created_at_column()

    prices: Mapped[list[CoursePrice]] = relationship(
        order_by="CoursePrice.tier", lazy="selectin", cascade="all, delete-orphan"
    )


class CoursePrice(Base):
    """The catalogue's price of one tier (10, 20 or 30 sessions) of a course: what a
    checkout charges, and what verification expects the provider to have taken."""

    __tablename__ = "course_prices"
    __table_args__ = (
        CheckConstraint("tier IN (10, 20, 30)", name="tier_known"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
    )

    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    tier: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    amount_cents: Mapped[int] = mapped_column(Integer)


class Trainer(Base):
    __tablename__ = "trainers"
    __table_args__ = (
        CheckConstraint("max_students > 0", name="max_students_positive"),
        # The capacity invariant, enforced by the database itself: the allocation
        # step increments active_students, and this check refuses an overfill.
        CheckConstraint(
            "active_students >= 0 AND active_students <= max_students", name="within_capacity"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    max_students: Mapped[int] = mapped_column(Integer)
    active_students: Mapped[int] = mapped_column(Integer, server_default="0")
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=true())
    # IANA name: the trainer's working hours are wall-clock times in this zone.
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    created_at: Mapped[datetime] = created_at_column()

    courses: Mapped[list[Course]] = relationship(secondary="trainer_courses")
    # Loaded only where asked for (selectinload): most reads of a trainer need no hours.
    working_hours: Mapped[list[WorkingDay]] = relationship(
        order_by="WorkingDay.weekday", cascade="all, delete-orphan", lazy="raise"
    )


class WorkingDay(Base):
    """One weekday's working window of a trainer, in the trainer's timezone. A weekday
    without a row is a day off; a new trainer works Monday to Friday, 08:00 to 20:00."""

    __tablename__ = "trainer_working_hours"
    __table_args__ = (
        CheckConstraint("weekday BETWEEN 0 AND 6", name="weekday_iso"),  # 0 = Monday
        CheckConstraint("starts < ends", name="starts_before_ends"),
    )

    trainer_id: Mapped[int] = mapped_column(
        ForeignKey("trainers.id", ondelete="CASCADE"), primary_key=True
    )
    weekday: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    starts: Mapped[time] = mapped_column(Time)
    ends: Mapped[time] = mapped_column(Time)


class TrainerCourse(Base):
    __tablename__ = "trainer_courses"

    trainer_id: Mapped[int] = mapped_column(
        ForeignKey("trainers.id", ondelete="CASCADE"), primary_key=True
    )
    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True, index=True
    )
