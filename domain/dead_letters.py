"""Dead letters as rows: recorded once per failed run, replayed or discarded once.

A letter is stored from a `DeadLetterRecord`, which the workers build when they park a
step; what a replay runs (`redelivery`) is theirs to write and to read.

Replaying writes an outbox message in the caller's transaction: a replay decided in a
committed transaction is published after that commit (by the after-commit channel, or
by the beat relay after a crash).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.errors import Conflict, NotFound, safe_reason
from domain.events import EventType, record_event
from models import DeadLetter, DeadLetterStatus, FailureKind, OutboxKind, Payment, outbox


@dataclass(frozen=True)
class DeadLetterRecord:
    """A step that failed for good, as the worker that parked it describes it.

    The step's name and the run's id are the workers' plain strings: stored, compared
    and shown, never parsed for meaning. `redelivery` is the workers' too: JSON that
    says how to run the step again, stored as given and handed back on replay, never
    read here. The kind of failure was decided where the error was caught."""

    run_id: str  # the failed run's id: a redelivery of the same failure updates its letter
    step: str
    correlation_id: str | None  # the payment id
    kind: FailureKind
    exception_type: str  # the error's full name; with its message and traceback, admin only
    exception_message: str
    traceback: str
    retries: int  # how many were spent before it was parked
    first_failed_at: datetime
    last_failed_at: datetime
    redelivery: dict[str, Any]

    @property
    def reason(self) -> str:
        """What the payment's owner may read about it."""
        return safe_reason(self.kind)


def store_dead_letter(session: Session, record: DeadLetterRecord) -> DeadLetter:
    """Insert, or — for a redelivered failure of the same run — update, the row.

    A new letter whose run is a replay's (its run id is a letter's `replay_task_id`)
    points at that letter (`replay_of`): the replay failed again. Only a new letter
    goes on the payment's timeline."""
    # What the latest attempt says: a new letter's, or the redelivered failure's update.
    latest = {
        "failure_kind": record.kind,
        "exception_type": record.exception_type,
        "exception_message": record.exception_message,
        "traceback": record.traceback,
        "retries": record.retries,
        "last_failed_at": record.last_failed_at,
    }
    inserted = session.scalar(
        pg_insert(DeadLetter)
        .values(
            task_id=record.run_id,
            task_name=record.step,
            correlation_id=record.correlation_id,
            redelivery=record.redelivery,
            first_failed_at=record.first_failed_at,
            replay_of=select(DeadLetter.id)
            .where(DeadLetter.replay_task_id == record.run_id)
            .scalar_subquery(),
            **latest,
        )
        .on_conflict_do_nothing(index_elements=[DeadLetter.task_id])
        .returning(DeadLetter.id)
    )
    if inserted is None:  # the same failure again: its latest attempt
        session.execute(
            update(DeadLetter).where(DeadLetter.task_id == record.run_id).values(**latest)
        )
    stored = session.scalars(
        select(DeadLetter)
        .where(DeadLetter.task_id == record.run_id)
        .execution_options(populate_existing=True)
    ).one()
    if inserted is not None:
        _on_timeline(
            session,
            stored,
            EventType.DEAD_LETTERED,
            retries=stored.retries,
            reason=safe_reason(stored.failure_kind),
            **(
                {"replay_of": stored.replay_of, "replay_failed_again": True}
                if stored.replay_of
                else {}
            ),
        )
    return stored


def _on_timeline(
    session: Session, letter: DeadLetter, event_type: EventType, **payload: Any
) -> None:
    """The letter's event on its payment's timeline (a letter without a payment has none)."""
    payment_id = _payment_id(letter)
    if payment_id is None:
        return
    student_id = session.scalar(select(Payment.student_id).where(Payment.id == payment_id))
    if student_id is None:
        return
    record_event(
        session,
        correlation_id=payment_id,
        student_id=student_id,
        event_type=event_type,
        payload={"dead_letter_id": letter.id, "step": step_name(letter.task_name), **payload},
    )


def step_name(step: str) -> str:
    """How the timeline names a step: the last part of its dotted name (`a.b.c` → `c`),
    as the retries' events name it."""
    return step.rsplit(".", 1)[-1]


def _open_letter(session: Session, letter_id: int) -> DeadLetter:
    letter = session.scalar(select(DeadLetter).where(DeadLetter.id == letter_id).with_for_update())
    if letter is None:
        raise NotFound("dead_letter_not_found", "No dead letter has this id.", id=letter_id)
    if letter.status != DeadLetterStatus.OPEN:
        raise Conflict(
            "dead_letter_not_open",
            f"The dead letter is already {letter.status}.",
            id=letter_id,
            status=letter.status,
        )
    return letter


def replay(session: Session, letter_id: int) -> DeadLetter:
    """Mark the letter replayed and hand its redelivery back to the workers through the
    outbox, in the caller's transaction: they run the step again (and what followed it)."""
    letter = _open_letter(session, letter_id)
    # The replay's run id, known now: a letter its failure parks points back here.
    letter.replay_task_id = str(uuid.uuid4())
    outbox.write(
        session,
        OutboxKind.REPLAY_DEAD_LETTER,
        correlation_id=uuid.UUID(letter.correlation_id),
        payload={
            "dead_letter_id": letter.id,
            "run_id": letter.replay_task_id,
            "redelivery": letter.redelivery,
        },
    )
    _resolve(session, letter, DeadLetterStatus.REPLAYED)
    _on_timeline(session, letter, EventType.DEAD_LETTER_REPLAYED)
    session.flush()
    return letter


def discard(session: Session, letter_id: int) -> DeadLetter:
    letter = _open_letter(session, letter_id)
    _resolve(session, letter, DeadLetterStatus.DISCARDED)
    _on_timeline(session, letter, EventType.DEAD_LETTER_DISCARDED)
    return letter


def _resolve(session: Session, letter: DeadLetter, status: DeadLetterStatus) -> None:
    """No longer open; after the commit, the workers take its message out of the queue
    where open letters wait (the outbox's settle message)."""
    letter.status = status
    letter.resolved_at = utcnow()
    outbox.write(
        session,
        OutboxKind.SETTLE_DEAD_LETTERS,
        correlation_id=_payment_id(letter) or uuid.UUID(int=0),
        payload={"dead_letter_id": letter.id},
    )


def _payment_id(letter: DeadLetter) -> uuid.UUID | None:
    try:
        return uuid.UUID(letter.correlation_id or "")
    except ValueError:
        return None


@dataclass(frozen=True)
class LetterFilter:
    """Which open letters a bulk replay or discard takes. `exception_type` is the full
    name or the class name alone; the time range is on `last_failed_at` (when the
    letter was parked), from inclusive, until exclusive."""

    task_name: str | None = None
    exception_type: str | None = None
    failed_from: datetime | None = None
    failed_until: datetime | None = None
    course_id: int | None = None
    correlation_id: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [DeadLetter.status == DeadLetterStatus.OPEN]
        if self.task_name:
            conditions.append(DeadLetter.task_name == self.task_name)
        if self.exception_type:
            conditions.append(
                or_(
                    DeadLetter.exception_type == self.exception_type,
                    DeadLetter.exception_type.endswith(f".{self.exception_type}", autoescape=True),
                )
            )
        if self.failed_from:
            conditions.append(DeadLetter.last_failed_at >= self.failed_from)
        if self.failed_until:
            conditions.append(DeadLetter.last_failed_at < self.failed_until)
        if self.course_id:
            conditions.append(
                DeadLetter.correlation_id.in_(
                    select(cast(Payment.id, String)).where(Payment.course_id == self.course_id)
                )
            )
        if self.correlation_id:
            conditions.append(DeadLetter.correlation_id == self.correlation_id)
        return conditions


def open_letter_ids(session: Session, filters: LetterFilter) -> list[int]:
    """Open letters matching the filters, oldest first (bulk replay and discard)."""
    return list(
        session.scalars(select(DeadLetter.id).where(*filters.conditions()).order_by(DeadLetter.id))
    )


@dataclass(frozen=True)
class OpenLetters:
    count: int
    oldest_parked_at: datetime | None  # its last_failed_at: when it was parked
    oldest_ids: list[int]  # up to OLDEST_SHOWN, oldest first

    def describe(self, now: datetime) -> str:
        """One line for Flower's task list: "2 dead letters open, oldest 7 min: ids 3, 4"."""
        letters = "dead letter" if self.count == 1 else "dead letters"
        if not self.count:
            return "0 dead letters open"
        assert self.oldest_parked_at is not None
        minutes = int((now - self.oldest_parked_at).total_seconds() // 60)
        more = ", …" if self.count > len(self.oldest_ids) else ""
        ids = ", ".join(map(str, self.oldest_ids))
        return f"{self.count} {letters} open, oldest {minutes} min: ids {ids}{more}"


OLDEST_SHOWN = 10


def open_letters(session: Session) -> OpenLetters:
    """How many letters are open and since when: what Flower's tasks page shows (the
    record task's and the beat report's results)."""
    count, oldest = session.execute(
        select(func.count(), func.min(DeadLetter.last_failed_at)).where(
            DeadLetter.status == DeadLetterStatus.OPEN
        )
    ).one()
    ids = session.scalars(
        select(DeadLetter.id)
        .where(DeadLetter.status == DeadLetterStatus.OPEN)
        .order_by(DeadLetter.id)
        .limit(OLDEST_SHOWN)
    )
    return OpenLetters(count, oldest, list(ids))
