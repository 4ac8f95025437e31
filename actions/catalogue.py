"""Catalogue writes (admin), one transaction each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from domain import catalogue
from domain.clock import utcnow
from domain.read_models import CatalogueCourse, get_course
from models import Course, Database, Student, Trainer


def create_student(database: Database, *, name: str, email: str, timezone: str) -> Student:
    with database.transaction() as session:
        return catalogue.create_student(session, name=name, email=email, timezone=timezone)


def create_course(
    database: Database,
    *,
    title: str,
    currency: str = "EUR",
    session_minutes: int = 60,
    prices: Mapping[str, int] | None = None,
) -> Course:
    """`prices` as the API takes them: {"tier_10": cents, ...} for the tiers given."""
    with database.transaction() as session:
        return catalogue.create_course(
            session,
            title=title,
            currency=currency,
            session_minutes=session_minutes,
            prices=_by_tier(prices),
        )


def update_course(
    database: Database,
    course_id: int,
    *,
    prices: Mapping[str, int] | None = None,
    **changes: Any,
) -> CatalogueCourse:
    """PATCH /courses/{id}: the change, and the course as the catalogue shows it."""
    with database.transaction() as session:
        catalogue.update_course(session, course_id, prices=_by_tier(prices), **changes)
        return get_course(session, course_id)


def _by_tier(prices: Mapping[str, int] | None) -> dict[int, int]:
    return {int(name.removeprefix("tier_")): cents for name, cents in (prices or {}).items()}


def create_trainer(
    database: Database,
    *,
    name: str,
    email: str,
    max_students: int,
    course_ids: Sequence[int],
    is_active: bool = True,
    timezone: str = "UTC",
    working_hours: catalogue.WeekHours | None = None,
) -> Trainer:
    with database.transaction() as session:
        trainer = catalogue.create_trainer(
            session,
            name=name,
            email=email,
            max_students=max_students,
            course_ids=course_ids,
            is_active=is_active,
            timezone=timezone,
            working_hours=working_hours,
        )
        # TrainerOut lists them after the session closed.
        session.refresh(trainer, ["courses", "working_hours"])
        return trainer


def update_trainer(database: Database, trainer_id: int, **changes: Any) -> catalogue.TrainerChange:
    """PATCH /trainers/{id}: the change, and a reallocation chain (published after commit)
    for every allocation the trainer can no longer serve."""
    with database.transaction() as session:
        change = catalogue.update_trainer(session, trainer_id, now=utcnow(), **changes)
        session.refresh(change.trainer, ["courses", "working_hours"])
        return change
