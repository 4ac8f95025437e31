"""Dead letters: Celery on Redis has none, so the base task parks its final failure.

`park` runs in the failing task's `on_failure`, before its message is acked, and
publishes the letter to the `dead_letter_intake` queue; `record_dead_letter` (consumed
by the dead-letter worker) stores it in PostgreSQL, the letters' record. If the broker
is down, `park` writes the row itself. Replay and discard are application actions
(actions.dead_letters).

What Flower shows is true at a glance (docs/operations.md, "Dead letters in Flower"):
- each letter is a red FAILURE on the Tasks page: its record task ends in
  `DeadLetterOpen`, whose message names the letter id, the step and why;
- the `dead_letter` queue holds one message per open letter (`parked`), which no worker
  consumes: its length on the Broker page is the number of open letters. A replay or a
  discard asks for a `settle` (through the outbox), which rebuilds the queue from
  PostgreSQL's open letters; beat settles every minute as well, which puts back a
  message that a broker outage kept from being parked.

The letter is a `domain.dead_letters.DeadLetterRecord`; what it takes to run the step
again (the task, its arguments, the rest of its chain) is built here as a
`tasks.redelivery.Redelivery`, which the domain stores without reading, and the kind of
failure is decided here (tasks.failures).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, Task, shared_task
from celery.exceptions import AlwaysEagerIgnored
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from actions import dead_letters
from celeryconfig import PARKED_QUEUE
from domain.clock import utcnow
from domain.dead_letters import DeadLetterRecord, LetterFilter, step_name
from models import Database, FailureKind
from tasks.chains import PARKED_DEAD_LETTER, RECORD_DEAD_LETTER
from tasks.failures import failure_kind, failure_kind_named, qualified_name
from tasks.redelivery import Redelivery

log = logging.getLogger(__name__)

# The message header that carries a step's first failure across its retries (tasks.base).
FIRST_FAILED_AT = "x_first_failed_at"


def park(
    *,
    task: Task,
    task_id: str,
    exc: BaseException,
    traceback: str,
    args: list[Any],
    kwargs: dict[str, Any],
    first_failed_at: str | None,
) -> None:
    now = utcnow()
    record = DeadLetterRecord(
        run_id=task_id,  # the failure's own (task.request is empty in some paths)
        step=task.name,
        correlation_id=kwargs.get("correlation_id"),
        kind=failure_kind(exc),
        exception_type=qualified_name(exc),
        exception_message=str(exc)[:4000],
        traceback=traceback[-20000:],
        retries=task.request.retries,
        first_failed_at=datetime.fromisoformat(first_failed_at) if first_failed_at else now,
        last_failed_at=now,
        redelivery=Redelivery(
            task_name=task.name, args=args, kwargs=kwargs, chain=list(task.request.chain or [])
        ).to_json(),
    )
    log.error("dead-lettering %s: %s", task.name, record.exception_message)
    try:
        publish(task.app, record)
        return
    except Exception:
        log.exception("dead-letter publish failed; recording it directly")
    try:
        dead_letters.record(task.app.database, record)
    except Exception:
        # Last resort: the whole letter is in the log, to be re-entered by hand.
        log.critical("dead letter could not be recorded", extra={"dead_letter": to_message(record)})
        raise


def publish(app: Celery, record: DeadLetterRecord) -> None:
    """Hand the letter to the dead_letter_intake queue, whose worker stores it."""
    app.signature(RECORD_DEAD_LETTER, kwargs=to_message(record)).apply_async(
        argsrepr="()", kwargsrepr=_short(record)
    )


class DeadLetterOpen(Exception):
    """How a recorded letter ends its record task: a FAILURE, red on Flower's Tasks
    page, whose message names the letter id (what replay needs), the failed step and
    why. Expected (the task's `throws`): the worker logs it in one line."""


@shared_task(
    bind=True,
    name=RECORD_DEAD_LETTER,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,  # the database coming back is all it waits for
    throws=(DeadLetterOpen,),
)
def record_dead_letter(self: Task, **message: Any) -> str:
    """Store the letter, park its message in the dead_letter queue, and end in
    DeadLetterOpen. A redelivery of a letter resolved meanwhile parks nothing."""
    with parking(self.app.database):
        recorded = dead_letters.record(self.app.database, from_message(message))
        if not recorded.still_open:
            return f"dead letter {recorded.letter_id} was resolved already"
        try:
            park_in_queue(self.app, recorded.letter_id)
        except Exception:  # recorded all the same: beat's next settle parks it
            log.warning("dead letter %s not parked yet", recorded.letter_id, exc_info=True)
    # What matters first (Flower's Tasks page cuts the line at the screen's edge): the
    # letter id replay needs, and why; then where, and how many are open.
    again = f", its replay of dead letter {recorded.replay_of} failed again"
    raise DeadLetterOpen(
        f"dead letter {recorded.letter_id}: {recorded.exception[:REASON_SHOWN]}"
        f" — {step_name(recorded.step)} for payment {recorded.correlation_id}"
        f"{again if recorded.replay_of else ''}. {recorded.open.describe(utcnow())}"
    )


def park_in_queue(app: Celery, letter_id: int) -> None:
    """The letter's message in the dead_letter queue, where it waits while the letter
    is open. Raises what the broker raised."""
    # send_task: published even in eager mode (tests), where a signature would run it;
    # a parked message is never meant to run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlwaysEagerIgnored)
        app.send_task(PARKED_DEAD_LETTER, kwargs={"letter_id": letter_id})


@shared_task(bind=True, name=PARKED_DEAD_LETTER)
def parked_dead_letter(self: Task, letter_id: int) -> None:
    """Runs only if a worker consumes the dead_letter queue, which none should: the
    message leaves the queue (the next settle puts it back)."""
    log.warning(
        "a worker consumes the %s queue, where open dead letters wait for an operator: "
        "take it off that queue (dead letter %s's message is back within a minute)",
        PARKED_QUEUE,
        letter_id,
    )


@dataclass(frozen=True)
class Settled:
    parked: int  # messages in the queue now: one per open letter
    taken_out: int  # messages it held before: resolved letters' and duplicates among them
    recorded: int  # letters an older release left in the queue for its consumer, recorded


# Held while a letter is recorded and parked, and while a settle rebuilds the queue:
# interleaved, both would park the same letter (a settle reading a letter just recorded,
# whose own message comes after the settle's).
PARKING_LOCK = 0x7061726B696E67  # "parking", for pg_advisory_lock


@contextmanager
def parking(database: Database) -> Iterator[None]:
    """The parking lock, waited for (a settle takes milliseconds per letter)."""
    with database.engine.connect() as connection:
        connection.execute(select(func.pg_advisory_lock(PARKING_LOCK)))
        try:
            yield
        finally:
            connection.execute(select(func.pg_advisory_unlock(PARKING_LOCK)))
            connection.commit()


def settle(app: Celery, database: Database, *, asked: Callable[[], None]) -> Settled:
    """Rebuild the dead_letter queue from PostgreSQL: one message per open letter.

    Under the parking lock, `asked` first (from then on a replay or discard asks for a
    settle of its own: tasks.handoff's debounce). Every message in the queue is taken
    (held unacknowledged), one message is parked for each open letter, then those taken
    are acknowledged: a crash in between leaves more messages, never fewer (the next
    settle removes the duplicates). A message of the release before the queue held
    parked letters (a record task, waiting there for its consumer) is recorded first."""
    queue = app.amqp.queues[PARKED_QUEUE]
    with (
        parking(database),
        app.connection_for_write() as connection,
        connection.channel() as channel,
    ):
        asked()
        bound = queue(channel)
        bound.declare()
        held = []
        while (message := bound.get(no_ack=False, accept=["json"])) is not None:
            held.append(message)
        recorded = 0
        for message in held:
            if message.headers.get("task") == RECORD_DEAD_LETTER:
                _, kwargs, _ = message.decode()
                dead_letters.record(database, from_message(kwargs))
                recorded += 1
        open_ids = dead_letters.matching(database, LetterFilter())
        for letter_id in open_ids:
            park_in_queue(app, letter_id)
        for message in held:
            message.ack()
    return Settled(parked=len(open_ids), taken_out=len(held), recorded=recorded)


def to_message(record: DeadLetterRecord) -> dict[str, Any]:
    """The record as the dead_letter_intake queue carries it (JSON)."""
    return {
        "run_id": record.run_id,
        "step": record.step,
        "correlation_id": record.correlation_id,
        "kind": record.kind.value,
        "exception_type": record.exception_type,
        "exception_message": record.exception_message,
        "traceback": record.traceback,
        "retries": record.retries,
        "first_failed_at": record.first_failed_at.isoformat(),
        "last_failed_at": record.last_failed_at.isoformat(),
        "redelivery": record.redelivery,
    }


def from_message(message: dict[str, Any]) -> DeadLetterRecord:
    if "run_id" not in message:
        return _parked_by_an_older_release(message)
    return DeadLetterRecord(
        run_id=message["run_id"],
        step=message["step"],
        correlation_id=message["correlation_id"],
        kind=FailureKind(message["kind"]),
        exception_type=message["exception_type"],
        exception_message=message["exception_message"],
        traceback=message["traceback"],
        retries=message["retries"],
        first_failed_at=datetime.fromisoformat(message["first_failed_at"]),
        last_failed_at=datetime.fromisoformat(message["last_failed_at"]),
        redelivery=message["redelivery"],
    )


def _parked_by_an_older_release(letter: dict[str, Any]) -> DeadLetterRecord:
    """A message of the release before `DeadLetterRecord` (the row's columns, with the
    call's arguments and chain beside them), which may wait in the queue across a
    deploy. To be removed once no such release runs."""
    return DeadLetterRecord(
        run_id=letter["task_id"],
        step=letter["task_name"],
        correlation_id=letter["correlation_id"],
        kind=failure_kind_named(letter["exception_type"]),
        exception_type=letter["exception_type"],
        exception_message=letter["exception_message"],
        traceback=letter["traceback"],
        retries=letter["retries"],
        first_failed_at=datetime.fromisoformat(letter["first_failed_at"]),
        last_failed_at=datetime.fromisoformat(letter["last_failed_at"]),
        redelivery=Redelivery.from_json(letter).to_json(),
    )


# Celery cuts a message's argument repr at 1024 characters (and the letter's traceback
# alone is longer): Flower would show a cut-off dict. It shows this instead.
REASON_SHOWN = 300


def _short(record: DeadLetterRecord) -> str:
    return repr(
        {
            "task_name": record.step,
            "task_id": record.run_id,
            "correlation_id": record.correlation_id,
            "retries": record.retries,
            "exception": f"{record.exception_type}: {record.exception_message}"[:REASON_SHOWN],
        }
    )
