"""Structured logging: JSON lines carrying request id, correlation id and task id.

The ids live in context variables, set by the API per request and by the base task
per task run, so every log line of one payment's story can be grepped by its id.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

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


def mask_sensitive(text: str) -> str:
    text = _CARD.sub(lambda m: "****" + re.sub(r"\D", "", m.group())[-4:], text)
    return _EMAIL.sub(r"\1***@\2", text)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT_VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        if isinstance(record.msg, str):
            record.msg = mask_sensitive(record.msg)
        return True


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


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s %(task_id)s] %(message)s"
            )
        )
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
