"""Trainer choice: who may take a student, and who should."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerLoad:
    """What the choice needs to know about one trainer, for one course. Whether the
    student's slot is free in the trainer's week is asked afterwards, of the locked
    trainer (calendar.span_fits over calendar.tier_span)."""

    trainer_id: int
    is_active: bool
    teaches_course: bool
    active_students: int
    max_students: int

    @property
    def eligible(self) -> bool:
        return self.is_active and self.teaches_course and self.active_students < self.max_students


def rank_trainers(candidates: Iterable[TrainerLoad]) -> list[TrainerLoad]:
    """Eligible trainers, best first: least loaded, then the lowest id (stable)."""
    eligible = [c for c in candidates if c.eligible]
    return sorted(eligible, key=lambda c: (c.active_students, c.trainer_id))


def choose_trainer(candidates: Iterable[TrainerLoad]) -> TrainerLoad | None:
    ranked = rank_trainers(candidates)
    return ranked[0] if ranked else None
