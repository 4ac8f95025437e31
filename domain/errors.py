"""Errors the domain raises. The API turns `DomainError` into a JSON 4xx; the tasks
retry `TransientStepError` and dead-letter `PermanentStepError` at once."""

from __future__ import annotations

from typing import Any


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


class NoTrainerAvailable(TransientStepError):
    pass


class PermanentStepError(Exception):
    """Retrying cannot help; the step goes to the dead-letter queue at once."""


class StepCancelled(Exception):
    """The payment was refunded: the forward step does nothing and the chain stops
    (neither a retry nor a dead letter; the compensation owns the outcome)."""


def qualified_name(exc: BaseException) -> str:
    """How a dead letter and the timeline name an error: module and class."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


# What a student (and the payment's public answer) may read about a failure: short and
# operator-safe. Class names, messages and tracebacks stay in the admin-only dead letter.
SAFE_REASONS = {
    f"{__name__}.NoTrainerAvailable": "no trainer is free for this course and time yet",
    "domain.payments.NotSettledYet": "the payment provider has not settled the payment yet",
    f"{__name__}.TransientStepError": "a service this step needs was briefly unavailable",
    f"{__name__}.PermanentStepError": "this step cannot succeed until an operator steps in",
    "sqlalchemy.exc.OperationalError": "the database was briefly unavailable",
    "sqlalchemy.exc.IntegrityError": "a concurrent change got there first",
    "kombu.exceptions.OperationalError": "the message broker was briefly unavailable",
    "redis.exceptions.ConnectionError": "the message broker was briefly unavailable",
    "redis.exceptions.TimeoutError": "the message broker was briefly unavailable",
    "billiard.exceptions.SoftTimeLimitExceeded": "the step took too long",
}
UNEXPECTED = "an unexpected error; an operator has the details"


def safe_reason(exception_type: str) -> str:
    """The operator-safe reason for an error named as `qualified_name` names it."""
    return SAFE_REASONS.get(exception_type, UNEXPECTED)
