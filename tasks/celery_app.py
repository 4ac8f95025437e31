"""The Celery application: `celery -A tasks.celery_app worker|beat|flower`.

It is built from this process's Settings (one object, read once) and owns the database
the tasks use (`celery_app.database`), whose sessions carry the after-commit channel.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from celery import Celery
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    beat_init,
    before_task_publish,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from celeryconfig import celery_config
from core import tracing
from core.config import Settings, get_settings
from core.logs import configure_logging
from models import Database
from tasks import telemetry


class TutorflowCelery(Celery):
    def __init__(self, settings: Settings) -> None:
        super().__init__(
            "tutorflow",
            include=["tasks.pipeline", "tasks.dead_letters", "tasks.beat", "tasks.notifications"],
        )
        self.settings = settings
        self.conf.update(celery_config(settings))

    @cached_property
    def database(self) -> Database:
        from tasks.effects import database_for  # the channel publishes these tasks

        return database_for(self.settings)


celery_app = TutorflowCelery(get_settings())
telemetry.install(celery_app)  # durations, retries, queue consumers for /metrics


# Beat jobs that run every few seconds. Celery's own lines about them (beat's "sending
# due task", the worker's "received" and "succeeded") are DEBUG, not INFO: otherwise they
# are half of an idle stack's log. The job itself logs INFO when it did something.
ROUTINE_TASKS = frozenset({"tutorflow.beat.relay_outbox"})
_CELERY_BOOKKEEPING = frozenset({"celery.beat", "celery.worker.strategy", "celery.app.trace"})


class RoutineTasksAtDebug(logging.Filter):
    """Lowers Celery's INFO bookkeeping lines about ROUTINE_TASKS to DEBUG (and drops
    them unless DEBUG is on). Celery has no per-task log level, hence a filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.name not in _CELERY_BOOKKEEPING:
            return True
        args = record.args
        names = args.values() if isinstance(args, dict) else (args or ())
        if not any(isinstance(name, str) and name in ROUTINE_TASKS for name in names):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    handler = configure_logging(celery_app.settings.log_level, celery_app.settings.log_json)
    handler.filters.insert(0, RoutineTasksAtDebug())  # before the masking filter formats


@worker_process_init.connect
def _new_pool_child(**_: object) -> None:
    if "database" in celery_app.__dict__:  # created before the fork
        celery_app.database.dispose_after_fork()
    # Here, not in the parent: the span exporter's thread lives in the process that runs
    # the tasks (a pool child runs the steps and the relay).
    tracing.install(celery_app.settings, role="worker")


@worker_process_shutdown.connect
@worker_shutdown.connect  # a thread pool's tasks ran in the worker's own process
def _pool_child_exit(**_: object) -> None:
    tracing.flush()


@worker_init.connect
def _worker_without_pool_children(sender: Any = None, **_: object) -> None:
    """A thread pool (the provider queue's worker) runs its tasks in the worker's own
    process, where no worker_process_init comes: its span exporter starts here."""
    if sender is not None and not issubclass(get_implementation(sender.pool_cls), PreforkPool):
        tracing.install(celery_app.settings, role="worker")


@beat_init.connect
def _beat_started(**_: object) -> None:
    # Beat's own jobs (top-up, stalled pipelines) start traces; the relay's ticks do not.
    tracing.install(celery_app.settings, role="beat")


@before_task_publish.connect
def _leave_time_limits_to_the_worker(headers: dict | None = None, **_: object) -> None:
    """Celery 5.7 writes the publisher's task_time_limit and task_soft_time_limit into
    every message (its `timelimit` header), and a worker obeys the header over its own
    configuration: an API or beat process with other settings than the workers' would
    set their limits (the tests' 120 s over a worker's 4 s: no limit ever fired). The
    publisher's defaults are dropped, so the worker that runs a task applies its own
    limits; a limit set for one task or one call stays in the message."""
    conf = celery_app.conf
    defaults = (conf.task_time_limit, conf.task_soft_time_limit)
    if headers is not None and tuple(headers.get("timelimit") or ()) == defaults:
        headers["timelimit"] = (None, None)
