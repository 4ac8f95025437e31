"""Operator actions on dead letters, and recording one, one transaction each."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from domain import dead_letters
from domain.dead_letters import DeadLetterRecord, LetterFilter, OpenLetters
from domain.errors import Conflict
from models import Database, DeadLetter, DeadLetterStatus


@dataclass(frozen=True)
class Recorded:
    """A stored letter and the open letters after it: the record task's result."""

    letter_id: int
    step: str
    correlation_id: str | None
    exception: str
    replay_of: int | None
    still_open: bool  # False: a redelivered record of a letter resolved meanwhile
    open: OpenLetters


def record(database: Database, record: DeadLetterRecord) -> Recorded:
    with database.transaction() as session:
        stored = dead_letters.store_dead_letter(session, record)
        return Recorded(
            letter_id=stored.id,
            step=stored.task_name,
            correlation_id=stored.correlation_id,
            # The error's class name: its module is on the letter (admin API, CLI).
            exception=f"{stored.exception_type.rsplit('.', 1)[-1]}: {stored.exception_message}",
            replay_of=stored.replay_of,
            still_open=stored.status == DeadLetterStatus.OPEN,
            open=dead_letters.open_letters(session),
        )


def open_letters(database: Database) -> OpenLetters:
    with database.session() as session:
        return dead_letters.open_letters(session)


def replay(database: Database, letter_id: int) -> DeadLetter:
    """The letter's redelivery (the failed step, and what followed it) is published
    after the commit."""
    with database.transaction() as session:
        return dead_letters.replay(session, letter_id)


def discard(database: Database, letter_id: int) -> DeadLetter:
    with database.transaction() as session:
        return dead_letters.discard(session, letter_id)


def matching(database: Database, filters: LetterFilter) -> list[int]:
    with database.transaction() as session:
        return dead_letters.open_letter_ids(session, filters)


BULK: dict[str, Callable[[Database, int], DeadLetter]] = {"replay": replay, "discard": discard}


def each(database: Database, action: str, ids: Iterable[int]) -> Iterator[tuple[int, bool]]:
    """Replay or discard each letter in its own transaction (a progress bar can follow
    it); (id, False) for one that someone replayed or discarded meanwhile."""
    for letter_id in ids:
        try:
            BULK[action](database, letter_id)
        except Conflict:
            yield letter_id, False
        else:
            yield letter_id, True


@dataclass(frozen=True)
class Bulk:
    action: str
    dry_run: bool
    matched: int
    ids: list[int]  # a dry run: the first DRY_RUN_SAMPLE matched; else those acted on
    skipped: list[int]


DRY_RUN_SAMPLE = 100


def bulk(database: Database, action: str, *, filters: LetterFilter, dry_run: bool) -> Bulk:
    """The admin API's bulk replay or discard (the CLI drives `each` itself, for its
    progress bar)."""
    ids = matching(database, filters)
    if dry_run:
        return Bulk(action, True, len(ids), ids[:DRY_RUN_SAMPLE], [])
    done = list(each(database, action, ids))
    acted = [one for one, ok in done if ok]
    return Bulk(action, False, len(ids), acted, [one for one, ok in done if not ok])
