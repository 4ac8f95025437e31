"""The kind of a step's failure, decided where its error is caught (the retry's event,
the dead letter): what a student reads about it (domain.errors.safe_reason), and
whether it is a fault at all. The domain's step errors name their own kind; the
libraries' errors are named here, by their class, and anything else is unexpected.
"""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import IntegrityError, OperationalError

from domain.errors import NoTrainerAvailable, PermanentStepError, TransientStepError
from domain.payments import NotSettledYet
from models import FailureKind


class WorkerLostRepeatedly(Exception):
    """A poison message: the process running the step died this many times (tasks/poison.py)."""

    def __init__(self, losses: int) -> None:
        super().__init__(
            f"the worker running this step was lost {losses} times (its process killed: "
            "out of memory, a crash in a C library, the hard time limit); parked as a poison "
            "message instead of being handed out again"
        )
        self.losses = losses


# By the class itself, not its subclasses (a subclass may mean something else).
LIBRARY_KINDS: dict[type[BaseException], FailureKind] = {
    WorkerLostRepeatedly: FailureKind.WORKER_LOST,
    OperationalError: FailureKind.DATABASE_UNAVAILABLE,
    IntegrityError: FailureKind.CONFLICT,
    kombu.exceptions.OperationalError: FailureKind.BROKER_UNAVAILABLE,
    redis.exceptions.ConnectionError: FailureKind.BROKER_UNAVAILABLE,
    redis.exceptions.TimeoutError: FailureKind.BROKER_UNAVAILABLE,
    SoftTimeLimitExceeded: FailureKind.TOO_SLOW,
}


def failure_kind(exc: BaseException | None) -> FailureKind:
    if isinstance(exc, TransientStepError | PermanentStepError):
        return exc.kind
    if exc is None:  # a retry without an error
        return FailureKind.UNEXPECTED
    return LIBRARY_KINDS.get(type(exc), FailureKind.UNEXPECTED)


def qualified_name(exc: BaseException) -> str:
    """How a dead letter names an error: module and class."""
    return _name(type(exc))


def _name(error: type[BaseException]) -> str:
    return f"{error.__module__}.{error.__qualname__}"


# A letter parked by a worker of the release before kinds were decided carries only its
# error's name (its message may wait in the dead_letter queue across a deploy).
_NAMED = {
    _name(error): error.kind
    for error in (TransientStepError, NoTrainerAvailable, NotSettledYet, PermanentStepError)
} | {_name(error): kind for error, kind in LIBRARY_KINDS.items()}


def failure_kind_named(name: str) -> FailureKind:
    return _NAMED.get(name, FailureKind.UNEXPECTED)
