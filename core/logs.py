"""Structured logging: JSON lines carrying request id, correlation id and task id.

The ids live in context variables, set by the API per request and by the base task
per task run, so every log line of one payment's story can be grepped by its id.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from core import tracing

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("task_id", default=None)

_CONTEXT_VARS = {
    "request_id": request_id_var,
    "correlation_id": correlation_id_var,
    "task_id": task_id_var,
}

# Card-like digit runs and e-mail addresses never reach the logs in clear.
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")


# A run that could hold a card number (13 digits or more, spaces or dashes between): a
# cheap search first, since most log text holds none and the card pattern's scan of
# every digit run (ids, times) cost 10 µs a string (BENCHMARKS.md, "Issue 25, third cut").
_DIGIT_RUN = re.compile(r"\d[\d -]{11,}\d")


def mask_sensitive(text: str) -> str:
    if _DIGIT_RUN.search(text):
        text = _CARD.sub(lambda m: "****" + re.sub(r"\D", "", m.group())[-4:], text)
    if "@" in text:
        text = _EMAIL.sub(r"\1***@\2", text)
    return text


def _masked(value: Any) -> Any:
    """Strings masked, inside dicts, lists and tuples too; anything else as it is."""
    if isinstance(value, str):
        return mask_sensitive(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(item) for item in value)
    return value


# The message's arguments as printed, noted before the filter merges them into the
# message: the text line leaves out an `extra` field that only repeats one.
_SHOWN_ARGS = "message_args"
# What every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    _SHOWN_ARGS,
    "message",
    "asctime",
    "trace_id",
    "span_id",
    *_CONTEXT_VARS,
}


class ContextFilter(logging.Filter):
    """Adds the context ids and masks card numbers and e-mail addresses in the message as
    it will be printed (template and arguments) and in every `extra` field."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT_VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        ids = tracing.current_ids()  # None unless tracing is on and a span is active
        if ids is not None:
            record.trace_id, record.span_id = ids
        if isinstance(record.args, tuple) and record.args:
            setattr(record, _SHOWN_ARGS, frozenset(str(arg) for arg in record.args))
        record.msg = mask_sensitive(record.getMessage())
        record.args = None
        for name in set(vars(record)) - _STANDARD:
            setattr(record, name, _masked(getattr(record, name)))
        return True


def _iso_utc(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-11-24T22:30:01.123Z."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _IsoJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_utc(record)


class _IsoTextFormatter(logging.Formatter):
    """One readable line: the context ids that are set, and only those, in brackets;
    then the message and its `extra` fields as name=value (JSON lines carry them as
    keys)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_utc(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = [
            f"{name}={value}"
            for name in (*_CONTEXT_VARS, "trace_id")
            if (value := getattr(record, name, None))
        ]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        extras = [
            f"{name}={value}"
            for name, value in vars(record).items()
            if name not in _STANDARD and name != "context" and not _repeats_message(record, name)
        ]
        return " ".join([super().formatMessage(record), *extras])


def _repeats_message(record: logging.LogRecord, name: str) -> bool:
    """An `extra` field the text line already shows: one whose value is also an argument
    of the message (a request's method, path and status: "GET /healthz 200"), or
    Celery's `extra={"data": …}`, its message's arguments again. JSON lines keep them
    all as keys."""
    if name == "data" and record.name.startswith("celery"):
        return True
    value = getattr(record, name)
    shown: frozenset[str] = getattr(record, _SHOWN_ARGS, frozenset())
    return not isinstance(value, dict | list | tuple) and str(value) in shown


class StartupChatterAtDebug(logging.Filter):
    """Lowers to DEBUG (and drops, unless DEBUG is on) the lines libraries print while a
    process starts, which its own ready line (`say_ready`) replaces: Celery's mingle,
    "Connected to", "ready." and beat's "Starting...". A rule is (logger, message
    template; None for any of the logger's messages). The `until_ready` rules hold only
    until the ready line: a reconnection later is worth its line."""

    def __init__(self) -> None:
        super().__init__()
        self.always: set[tuple[str, str | None]] = set()
        self.until_ready: set[tuple[str, str | None]] = set()
        self.ready = False

    def add(
        self,
        always: Iterable[tuple[str, str | None]] = (),
        until_ready: Iterable[tuple[str, str | None]] = (),
    ) -> None:
        self.always.update(always)
        self.until_ready.update(until_ready)

    def _matches(self, rules: set[tuple[str, str | None]], record: logging.LogRecord) -> bool:
        return (record.name, None) in rules or (record.name, str(record.msg)) in rules

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not (
            self._matches(self.always, record)
            or (not self.ready and self._matches(self.until_ready, record))
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


# One per process: its rules come from the process's set-up (tasks/celery_app.py,
# flowerconfig.py), its ready flag from say_ready.
STARTUP_CHATTER = StartupChatterAtDebug()
_startup_log = logging.getLogger("tutorflow.startup")


def say_ready(process: str, where: str) -> None:
    """The process's one line at start: "<process> ready: <where>" (docs/operations.md,
    "Startup")."""
    STARTUP_CHATTER.ready = True
    _startup_log.info("%s ready: %s", process, where)


def log_python_warnings() -> None:
    """Python warnings (a library's SecurityWarning, DeprecationWarning…) as one log line
    each, of the `py.warnings` logger: in the process's format, a JSON line under
    LOG_JSON, instead of several raw lines on stderr."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        logging.getLogger("py.warnings").warning(
            "%s: %s (%s:%s)", category.__name__, " ".join(str(message).split()), filename, lineno
        )

    warnings.showwarning = show


@contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    tokens = [
        (_CONTEXT_VARS[name], _CONTEXT_VARS[name].set(value)) for name, value in values.items()
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def configure_logging(
    level: str = "INFO", json_lines: bool = True, stream: Any = None
) -> logging.Handler:
    """One handler on the root logger (stderr unless `stream` is given); returns it.
    JSON lines for log shippers, or text for a person (`LOG_JSON`, off by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(
            _IsoJsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                timestamp=False,
                reserved_attrs=[*RESERVED_ATTRS, _SHOWN_ARGS],
            )
        )
    else:
        handler.setFormatter(
            _IsoTextFormatter("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")
        )
    handler.addFilter(STARTUP_CHATTER)
    handler.addFilter(ContextFilter())
    # Lines a library writes while it loads, about nothing the process does: Alembic's
    # "setup plugin …", seven each time a process first reads the migrations.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # The stripe library's two INFO lines a call ("Request to Stripe api", "Stripe API
    # response"): the steps and the breaker log what the provider's answer meant; they
    # come back with DEBUG.
    logging.getLogger("stripe").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return handler
