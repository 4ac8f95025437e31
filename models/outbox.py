"""The outbox, whole: how a hand-off to the broker is written, published and relayed.

- **Write** (`write`, or `insert_select` / `insert_select_sql` + `execute` for a writer
  that builds its row in SQL): the row is part of the transaction that calls for it,
  and it is registered for the after-commit publish as it is written, so no writer can
  forget to. (ORM-added rows
  are noticed at flush by models.effects; `execute` notes the rows its statement
  returned.) No other module inserts outbox rows (tests/test_architecture.py).
- **Publish** (`Publisher.publish`): each message is handed to the broker through the
  dispatch table the composition root gives (tasks.handoff: kind → publish), then the
  published ones are stamped in one statement. Used after commit (models.effects) and
  by the relay: one publisher.
- **Relay** (`Publisher.relay`, beat every few seconds): claims the rows nobody
  published (`FOR UPDATE SKIP LOCKED`, a lease in `next_attempt_at`, committed at once),
  publishes them with no lock held, then stamps them, or backs a failed one off.

Publishing twice is harmless (every consumer is idempotent); a lost publish is not,
hence the relay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Select,
    TextClause,
    any_,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from core import tracing
from core.tracing import current_traceparent
from models.base import id_array
from models.effects import Committed, WrittenOutbox, note_outbox
from models.events import OutboxKind, OutboxMessage
from models.session import Database, execute_autocommit

log = logging.getLogger(__name__)

# kind → the function that hands the payload to the broker (tasks.handoff).
Dispatch = Mapping[str, Callable[[Mapping[str, Any]], None]]

# Columns an INSERT ... RETURNING gives back, labelled so `execute` finds them.
RETURNED = ("outbox_id", "outbox_correlation_id", "outbox_kind", "outbox_payload")
# How long a relay's claim keeps other relays off the rows it is publishing.
RELAY_LEASE = timedelta(seconds=60)
RELAY_BACKOFF_MAX_SECONDS = 300


def write(
    session: Session, kind: OutboxKind, *, correlation_id: Any, payload: Mapping[str, Any]
) -> OutboxMessage:
    """Add one message to the session's transaction; published after its commit."""
    message = OutboxMessage(correlation_id=correlation_id, kind=kind, payload=dict(payload))
    session.add(message)
    return message


def insert_select(rows: Select[Any]) -> Insert:
    """INSERT ... SELECT of messages whose (correlation_id, kind, payload) `rows`
    selects, returning what `execute` registers. Use it as a statement or a CTE."""
    return (
        insert(OutboxMessage)
        .from_select(["correlation_id", "kind", "payload"], rows)
        .returning(*returned_columns(OutboxMessage.__table__.c))
    )


def insert_select_sql(rows_sql: str, *, with_sql: str = "") -> TextClause:
    """`insert_select` as plain SQL, for a writer whose statement SQLAlchemy would compile
    on every call (a PostgreSQL INSERT … ON CONFLICT has no cache key): `rows_sql`
    selects (correlation_id, kind, payload), after `with_sql`'s CTEs if any. `execute`
    supplies the writing trace (`:outbox_traceparent`), which a Core INSERT gets from
    the column's default."""
    return text(
        f"{with_sql} INSERT INTO outbox (correlation_id, kind, payload, traceparent)"
        " SELECT m.correlation_id, m.kind, m.payload, :outbox_traceparent"
        f" FROM ({rows_sql}) AS m (correlation_id, kind, payload)"
        f" RETURNING id AS {RETURNED[0]}, correlation_id AS {RETURNED[1]},"
        f" kind AS {RETURNED[2]}, payload AS {RETURNED[3]}"
    )


def returned_columns(columns: Any) -> list[Any]:
    """The written message's columns under the labels `execute` looks for; `columns`
    is the outbox table's `.c`, or the `.c` of a CTE made of `insert_select`."""
    if RETURNED[0] in columns:  # a CTE of insert_select: labelled already
        return [columns[name] for name in RETURNED]
    return [
        columns.id.label(RETURNED[0]),
        columns.correlation_id.label(RETURNED[1]),
        columns.kind.label(RETURNED[2]),
        columns.payload.label(RETURNED[3]),
    ]


def execute(session: Session, statement: Any, params: Mapping[str, Any] | None = None) -> list[Any]:
    """Run a statement that writes outbox rows in SQL (built with `insert_select`) and
    register every row it returned for the after-commit publish."""
    params = dict(params or {})
    if isinstance(statement, TextClause):  # insert_select_sql
        params["outbox_traceparent"] = current_traceparent()
    rows = list(session.execute(statement, params).all())
    note_outbox(
        session,
        [
            WrittenOutbox(
                row.outbox_id, str(row.outbox_correlation_id), row.outbox_kind, row.outbox_payload
            )
            for row in rows
            if getattr(row, "outbox_id", None) is not None
        ],
    )
    return rows


STAMP_PUBLISHED = (
    update(OutboxMessage)
    .where(OutboxMessage.id == any_(id_array("outbox_ids")))
    .where(OutboxMessage.published_at.is_(None))
    .values(published_at=func.now(), attempts=OutboxMessage.attempts + 1)
)


@dataclass(frozen=True)
class Claimed:
    """A message the relay took, with the trace that wrote it."""

    message: WrittenOutbox
    traceparent: str | None
    attempts: int


@dataclass
class RelayReport:
    published: int = 0
    failed: int = 0


class Publisher:
    """The one publisher: after commit (models.effects) and in the relay."""

    def __init__(self, dispatch: Dispatch) -> None:
        self.dispatch = dispatch

    def send(self, message: WrittenOutbox, *, traceparent: str | None = None) -> None:
        """Hand one message to the broker; raises what the broker raised."""
        with tracing.publishing(message.id, message.correlation_id, traceparent=traceparent):
            self.dispatch[message.kind](dict(message.payload))

    def publish(self, messages: Sequence[WrittenOutbox], bind: Engine | Connection) -> None:
        """After commit: publish each message, stamp the published ones in one
        statement. A message the broker refused stays for the relay (logged)."""
        published = []
        for message in messages:
            try:
                self.send(message)
            except Exception:
                log.warning(
                    "outbox publish failed; the relay will retry",
                    exc_info=True,
                    extra={"outbox_id": message.id, "correlation_id": message.correlation_id},
                )
                continue
            published.append(message)
        if published:
            _stamp(bind, published)

    def relay(self, database: Database, *, grace_seconds: float, limit: int) -> RelayReport:
        """Publish what nobody published (a crash after commit, a broker that was down),
        oldest first. The claim commits before the first publish: no row lock is held
        while the broker is asked. The first failure stops the run (the broker is likely
        down for the rest too): that row backs off, the rest of the claim is given back."""
        claimed = _claim(database, grace_seconds=grace_seconds, limit=limit)
        report = RelayReport()
        published: list[WrittenOutbox] = []
        for index, row in enumerate(claimed):
            try:
                self.send(row.message, traceparent=row.traceparent)
            except Exception as exc:
                report.failed += 1
                log.warning("relay publish failed", extra={"outbox_id": row.message.id})
                _back_off(database, row, exc, untried=[c.message.id for c in claimed[index + 1 :]])
                break
            published.append(row.message)
        if published:
            with database.transaction() as session:
                session.execute(STAMP_PUBLISHED, {"outbox_ids": [m.id for m in published]})
            report.published = len(published)
        return report


def _stamp(bind: Engine | Connection, messages: Iterable[WrittenOutbox]) -> None:
    messages = list(messages)
    try:
        execute_autocommit(bind, STAMP_PUBLISHED, {"outbox_ids": [m.id for m in messages]})
    except Exception:
        # Published but not stamped: the relay publishes them again, which is harmless.
        log.warning(
            "outbox stamp failed",
            exc_info=True,
            extra={
                "outbox_ids": [m.id for m in messages],
                "correlation_id": messages[0].correlation_id,
            },
        )


def _claim(database: Database, *, grace_seconds: float, limit: int) -> list[Claimed]:
    due = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.published_at.is_(None),
            OutboxMessage.next_attempt_at <= func.now(),
            OutboxMessage.created_at <= func.now() - timedelta(seconds=grace_seconds),
        )
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    lease = (
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(due))
        .values(next_attempt_at=func.now() + RELAY_LEASE)
        .returning(
            OutboxMessage.id,
            OutboxMessage.correlation_id,
            OutboxMessage.kind,
            OutboxMessage.payload,
            OutboxMessage.traceparent,
            OutboxMessage.attempts,
        )
    )
    with database.transaction() as session:
        rows = session.execute(lease).all()
    return sorted(
        (
            Claimed(
                WrittenOutbox(row.id, str(row.correlation_id), row.kind, row.payload),
                row.traceparent,
                row.attempts,
            )
            for row in rows
        ),
        key=lambda claimed: claimed.message.id,
    )


def _back_off(database: Database, row: Claimed, exc: BaseException, *, untried: list[int]) -> None:
    delay = timedelta(seconds=min(2 ** (row.attempts + 1), RELAY_BACKOFF_MAX_SECONDS))
    with database.transaction() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row.message.id)
            .values(
                attempts=OutboxMessage.attempts + 1,
                last_error=f"{type(exc).__name__}: {exc}"[:2000],
                next_attempt_at=func.now() + delay,
            )
        )
        if untried:  # their lease would keep them 60 s: the next run may take them
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(untried))
                .values(next_attempt_at=func.now())
            )


class AfterCommitChannel:
    """What a committed transaction's writes set off (models.effects hands them here):
    its outbox messages published and stamped, and its students' read models
    invalidated with a live event, in one Redis round trip (`announce`). Each runs on
    its own: a broker that fails leaves the messages to the relay; a stale read model
    expires by its TTL, and the chain's last step invalidates again with retries."""

    def __init__(
        self,
        publisher: Publisher,
        announce: Callable[[list[tuple[int, dict[str, Any]]]], None],
    ) -> None:
        self.publisher = publisher
        self.announce = announce

    def __call__(self, committed: Committed) -> None:
        if committed.outbox:
            self.publisher.publish(committed.outbox, committed.bind)
        if committed.events:
            self.announce(
                [(e.student_id, e.as_live_event()) for e in committed.events if e.student_id]
            )
