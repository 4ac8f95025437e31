"""What a transaction wrote that the world must hear of once it has committed.

Domain functions only write rows: state, domain events, outbox messages. This module
notices the `DomainEvent` and `OutboxMessage` rows a session inserts (ORM inserts are
found at flush; a writer that inserts them with SQL for speed notes them itself) and,
after the commit, hands them in one `Committed` to the session's after-commit channel:
one callable, installed by the composition root (bootstrap.py, models.outbox), that publishes the
outbox messages and invalidates and announces the students' read models. A rollback
forgets them; a row flushed inside a savepoint that was rolled back is not announced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.orm import InstanceState, ORMExecuteState, Session, SessionTransaction

from models.events import INSERT_EVENTS_SQL, DomainEvent, OutboxMessage, events_parameter

log = logging.getLogger(__name__)

CHANNEL = "after_commit_channel"  # key in Session.info (set by the sessionmaker)
_NOTED = "effects_noted"
_FLUSHED = "effects_flushed"
_COMMITTED = "effects_committed"  # handed over after commit, run once the connection is back
_PENDING = "effects_pending_events"  # recorded, not yet inserted (defer_event)
_INSERT_EVENTS = text(INSERT_EVENTS_SQL)


@dataclass(frozen=True)
class WrittenEvent:
    """A domain event this transaction wrote: its student's views change."""

    correlation_id: str
    student_id: int | None
    event_type: str
    payload: Mapping[str, Any] = field(default_factory=dict)

    def as_live_event(self) -> dict[str, Any]:
        """What the student's live stream receives."""
        return {
            "type": str(self.event_type),
            "payment_id": self.correlation_id,
            "student_id": self.student_id,
            **self.payload,
        }


@dataclass(frozen=True)
class WrittenOutbox:
    """An outbox message this transaction wrote: publish it, then stamp it."""

    id: int
    correlation_id: str
    kind: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Committed:
    events: tuple[WrittenEvent, ...]
    outbox: tuple[WrittenOutbox, ...]
    # The committed session's bind: an Engine, or the Connection its sessionmaker was
    # bound to (the tests bind theirs to the test's transaction: tests/conftest.py).
    bind: Engine | Connection


Channel = Callable[[Committed], None]


def note_events(session: Session, events: Iterable[WrittenEvent]) -> None:
    """For events inserted with SQL (not through the ORM) in this transaction."""
    _note(session, events)


def defer_event(session: Session, written: WrittenEvent) -> None:
    """Record a domain event in this transaction. It is inserted just before the next
    statement the session runs, or after its next flush, or with the step's own record
    (take_pending_events), or just before the commit, whichever comes first: every
    statement sent through the session sees it, and a step whose event is its last
    write spends no round trip of its own on it (one statement fewer a step:
    BENCHMARKS.md, "Issue 25"). Announced after the commit like every written event; a
    rollback (of the savepoint it was recorded in, or of the transaction) forgets it."""
    savepoint = session.get_nested_transaction()
    session.info.setdefault(_PENDING, []).append((savepoint, written))
    _note(session, [written])


def take_pending_events(session: Session) -> str | None:
    """The events recorded and not yet inserted, as INSERT_EVENTS_SQL's `:events`, for
    a writer that inserts them in a statement of its own; None if there are none. The
    caller must run that statement in this transaction."""
    pending: list[tuple[Any, WrittenEvent]] = session.info.pop(_PENDING, [])
    if not pending:
        return None
    return events_parameter(
        {
            "correlation_id": w.correlation_id,
            "student_id": w.student_id,
            "event_type": w.event_type,
            "payload": dict(w.payload),
        }
        for _, w in pending
    )


def _insert_pending(session: Session) -> None:
    events = take_pending_events(session)
    if events is not None:
        # On the connection: a Session.execute would come back here.
        session.connection().execute(_INSERT_EVENTS, {"events": events})


@event.listens_for(Session, "do_orm_execute")
def _insert_pending_before_statement(state: ORMExecuteState) -> None:
    if _PENDING in state.session.info:
        _insert_pending(state.session)


@event.listens_for(Session, "after_flush")
def _insert_pending_after_flush(session: Session, _flush_context: object) -> None:
    if _PENDING in session.info:
        _insert_pending(session)


@event.listens_for(Session, "before_commit")
def _insert_pending_before_commit(session: Session) -> None:
    if _PENDING in session.info:
        _insert_pending(session)


def note_outbox(session: Session, messages: Iterable[WrittenOutbox]) -> None:
    """For outbox rows inserted with SQL (not through the ORM) in this transaction."""
    _note(session, messages)


def _note(session: Session, written: Iterable[WrittenEvent | WrittenOutbox]) -> None:
    # Each with the savepoint it was written in (None: the outer transaction), so that
    # a savepoint's rollback forgets what was written inside it.
    savepoint = session.get_nested_transaction()
    session.info.setdefault(_NOTED, []).extend((savepoint, w) for w in written)


def _within(transaction: SessionTransaction | None, savepoint: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is savepoint:
            return True
        transaction = transaction.parent
    return False


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_NOTED, None)
    session.info.pop(_FLUSHED, None)


@event.listens_for(Session, "after_flush")
def _collect_flushed(session: Session, _flush_context: object) -> None:
    # `session.new` still holds the objects this flush inserted (ids now assigned).
    written = [o for o in session.new if isinstance(o, DomainEvent | OutboxMessage)]
    if written:
        session.info.setdefault(_FLUSHED, []).extend(written)


def _as_written(row: DomainEvent | OutboxMessage) -> WrittenEvent | WrittenOutbox:
    if isinstance(row, DomainEvent):
        return WrittenEvent(str(row.correlation_id), row.student_id, row.event_type, row.payload)
    return WrittenOutbox(row.id, str(row.correlation_id), row.kind, row.payload)


def _state(row: DomainEvent | OutboxMessage) -> InstanceState[DomainEvent | OutboxMessage]:
    return inspect(row)


@event.listens_for(Session, "after_commit")
def _hand_over(session: Session) -> None:
    noted = [written for _, written in session.info.pop(_NOTED, [])]
    flushed: list[DomainEvent | OutboxMessage] = session.info.pop(_FLUSHED, [])
    channel: Channel | None = session.info.get(CHANNEL)
    if channel is None or not (noted or flushed):
        return
    # A row inserted in a savepoint that was rolled back is transient again: skip it.
    written = [*noted, *(_as_written(r) for r in flushed if not _state(r).transient)]
    session.info[_COMMITTED] = Committed(
        events=tuple(w for w in written if isinstance(w, WrittenEvent)),
        outbox=tuple(w for w in written if isinstance(w, WrittenOutbox)),
        bind=session.get_bind(),
    )


@event.listens_for(Session, "after_transaction_end")
def _run_channel(session: Session, transaction: SessionTransaction) -> None:
    """The channel runs once the transaction's connection is back in the pool: its own
    statement (the outbox stamp) must not need a second connection while the first is
    held, or as many concurrent requests as the pool holds would wait on each other."""
    if transaction.parent is not None:
        return
    committed: Committed | None = session.info.pop(_COMMITTED, None)
    channel: Channel | None = session.info.get(CHANNEL)
    if committed is None or channel is None:
        return
    try:
        channel(committed)
    except Exception:  # the channel isolates its callbacks; this is the last guard
        log.exception("after-commit channel failed; the outbox relay covers the messages")


@event.listens_for(Session, "after_soft_rollback")
def _drop_on_rollback(session: Session, previous: SessionTransaction) -> None:
    # The whole transaction's rollback forgets everything. A savepoint's rollback leaves
    # its flushed rows transient, which `_hand_over` skips, and forgets what was noted
    # inside it.
    if previous.parent is None:
        _forget(session)
    elif previous.nested:
        for key in (_NOTED, _PENDING):
            if key in session.info:
                session.info[key] = [
                    (savepoint, written)
                    for savepoint, written in session.info[key]
                    if not _within(savepoint, previous)
                ]
