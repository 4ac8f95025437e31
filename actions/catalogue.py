"""Catalogue writes (admin), one transaction each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from domain import catalogue
from models import Course, Database, Student, Trainer


def create_student(database: Database, *, name: str, email: str, timezone: str) -> Student:
    with database.transaction() as session:
        return catalogue.create_student(session, name=name, email=email, timezone=timezone)


def create_course(
    database: Database,
    *,
    title: str,
    currency: str = "EUR",
    prices: Mapping[str, int] | None = None,
) -> Course:
    """`prices` as the API takes them: {"tier_10": cents, ...} for the tiers given."""
    by_tier = {int(name.removeprefix("tier_")): cents for name, cents in (prices or {}).items()}
    with database.transaction() as session:
        return catalogue.create_course(session, title=title, currency=currency, prices=by_tier)


def create_trainer(
    database: Database,
    *,
    name: str,
    email: str,
    max_students: int,
    course_ids: Sequence[int],
    is_active: bool = True,
) -> Trainer:
    with database.transaction() as session:
        trainer = catalogue.create_trainer(
            session,
            name=name,
            email=email,
            max_students=max_students,
            course_ids=course_ids,
            is_active=is_active,
        )
        session.refresh(trainer, ["courses"])  # TrainerOut lists them after the session closed
        return trainer
