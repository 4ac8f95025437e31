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
