"""Operator actions on dead letters, and recording one, one transaction each."""

from __future__ import annotations

from typing import Any

from domain import dead_letters
from models import Database, DeadLetter


def record(database: Database, letter: dict[str, Any]) -> None:
    with database.transaction() as session:
        dead_letters.store_dead_letter(session, letter)


def replay(database: Database, letter_id: int) -> DeadLetter:
    """The failed task (and the rest of its chain) is published after the commit."""
    with database.transaction() as session:
        return dead_letters.replay(session, letter_id)


def discard(database: Database, letter_id: int) -> DeadLetter:
    with database.transaction() as session:
        return dead_letters.discard(session, letter_id)


def open_letter_ids(
    database: Database, *, task_name: str | None = None, correlation_id: str | None = None
) -> list[int]:
    with database.transaction() as session:
        return dead_letters.open_letter_ids(
            session, task_name=task_name, correlation_id=correlation_id
        )
