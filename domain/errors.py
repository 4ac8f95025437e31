"""Errors the domain raises. The API turns `DomainError` into a JSON 4xx; the tasks
retry `TransientStepError` and dead-letter `PermanentStepError` at once. A step error
names its kind of failure (what a student reads about it); the tasks name the kind of
any other error they catch."""

from __future__ import annotations

from typing import Any, ClassVar

from models import FailureKind


class DomainError(Exception):
    status = 400

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    status = 409


class Unprocessable(DomainError):
    status = 422


class TransientStepError(Exception):
    """Worth retrying: the world may change (a trainer frees up, a lock is released)."""

    kind: ClassVar[FailureKind] = FailureKind.SERVICE_UNAVAILABLE


class NoTrainerAvailable(TransientStepError):
    kind = FailureKind.NO_TRAINER


class PermanentStepError(Exception):
    """Retrying cannot help; the step goes to the dead-letter queue at once."""

    kind: ClassVar[FailureKind] = FailureKind.NEEDS_OPERATOR


class StepCancelled(Exception):
    """The payment was refunded: the forward step does nothing and the chain stops
    (neither a retry nor a dead letter; the compensation owns the outcome)."""


# What a student (and the payment's public answer) may read about a failure: short and
# operator-safe, by its kind. Class names, messages and tracebacks stay in the admin-only
# dead letter.
SAFE_REASONS = {
    FailureKind.NO_TRAINER: "no trainer is free for this course and time yet",
    FailureKind.NOT_SETTLED: "the payment provider has not settled the payment yet",
    FailureKind.SERVICE_UNAVAILABLE: "a service this step needs was briefly unavailable",
    FailureKind.NEEDS_OPERATOR: "this step cannot succeed until an operator steps in",
    FailureKind.DATABASE_UNAVAILABLE: "the database was briefly unavailable",
    FailureKind.CONFLICT: "a concurrent change got there first",
    FailureKind.BROKER_UNAVAILABLE: "the message broker was briefly unavailable",
    FailureKind.TOO_SLOW: "the step took too long",
    FailureKind.WORKER_LOST: "the step kept stopping the process running it; an operator will look",
    FailureKind.UNEXPECTED: "an unexpected error; an operator has the details",
}


def safe_reason(kind: FailureKind | str) -> str:
    """The operator-safe reason for a failure of this kind."""
    return SAFE_REASONS[FailureKind(kind)]
