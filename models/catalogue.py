"""Students, courses, trainers and what each trainer teaches."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Integer,
    String,
    Text,
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

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()


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
    created_at: Mapped[datetime] = created_at_column()

    courses: Mapped[list[Course]] = relationship(secondary="trainer_courses")


class TrainerCourse(Base):
    __tablename__ = "trainer_courses"

    trainer_id: Mapped[int] = mapped_column(
        ForeignKey("trainers.id", ondelete="CASCADE"), primary_key=True
    )
    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True, index=True
    )
