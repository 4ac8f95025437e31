"""The Celery application class. The composition root (bootstrap.py) builds one per
Settings and hands it what the tasks use: the worker-role database (whose sessions carry
the after-commit channel), the cache, the payment provider, the mailer and the outbox
publisher. Tasks reach them through `task.app` (tasks.base.services), never through a
module global; the Celery processes start from `celeryapp.py`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Celery, current_app
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    beat_init,
    before_task_publish,
    celeryd_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from celeryconfig import AMQP_TRANSPORTS, broker_transport, celery_config
from core import tracing
from core.config import Settings
from core.logs import STARTUP_CHATTER, configure_logging, log_python_warnings, say_ready
from core.redis_client import without_password
from tasks import chains, telemetry
from tasks.poison import PoisonedMessages

if TYPE_CHECKING:
    from core.cache import Cache
    from core.mail import Mailer
    from core.provider import PaymentProvider
    from core.telemetry import Telemetry
    from models import Database
    from models.outbox import Publisher

# The modules that define the tasks (shared_task): a worker imports them at start.
TASK_MODULES = ["tasks.pipeline", "tasks.dead_letters", "tasks.beat", "tasks.notifications"]


class TutorflowCelery(Celery):
    """A Celery app with this deployment's parts attached (set by bootstrap.py)."""

    database: Database
    cache: Cache
    telemetry: Telemetry
    provider: PaymentProvider
    mailer: Mailer
    outbox: Publisher

    def __init__(self, settings: Settings, *, set_as_current: bool = False) -> None:
        super().__init__("tutorflow", include=TASK_MODULES, set_as_current=set_as_current)
        self.settings = settings
        self.conf.update(celery_config(settings))
        telemetry.install(self)  # durations, retries, queue consumers for /metrics
        if broker_transport(settings.broker_url) in AMQP_TRANSPORTS:
            # RabbitMQ's dead-lettered poison messages become dead letters (tasks/poison.py).
            self.steps["consumer"].add(PoisonedMessages)


def _running_app() -> TutorflowCelery:
    """The app this worker or beat process runs (celeryapp.py made it the default)."""
    app: TutorflowCelery = current_app._get_current_object()
    return app


# Beat jobs that run every few seconds. Celery's own lines about them (beat's "sending
# due task", the worker's "received" and "succeeded") are DEBUG, not INFO: otherwise they
# are half of an idle stack's log. The job itself logs INFO when it did something.
ROUTINE_TASKS = frozenset({"tutorflow.beat.relay_outbox"})
# A payment's steps that log their own outcome at INFO ("step done" with the step, its
# result and the payment's ids; "notifications sent"): Celery's "received" and
# "succeeded" lines about them say nothing more, and are DEBUG. Its lines about a retry,
# a failure, a rejected or ignored run stay. Six lines fewer a payment, each about
# 0.2 M instructions through the handler (BENCHMARKS.md, "Issue 25, tenth session").
OWN_OUTCOME_TASKS = frozenset(
    {
        chains.VERIFY_PAYMENT,
        chains.CREATE_PURCHASE,
        chains.ALLOCATE_TRAINER,
        chains.SCHEDULE_SESSIONS,
        chains.SEND_NOTIFICATION,
    }
)
_CELERY_BOOKKEEPING = frozenset({"celery.beat", "celery.worker.strategy", "celery.app.trace"})
_RECEIVED_OR_SUCCEEDED = (LOG_RECEIVED, LOG_SUCCESS)  # compared, never hashed: any msg


class RoutineTasksAtDebug(logging.Filter):
    """Lowers Celery's INFO bookkeeping lines about ROUTINE_TASKS, and its "received"
    and "succeeded" lines about OWN_OUTCOME_TASKS, to DEBUG (and drops them unless
    DEBUG is on). Celery has no per-task log level, hence a filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.name not in _CELERY_BOOKKEEPING:
            return True
        args = record.args
        names = [
            name
            for name in (args.values() if isinstance(args, dict) else (args or ()))
            if isinstance(name, str)
        ]
        routine = any(name in ROUTINE_TASKS for name in names)
        own_outcome = record.msg in _RECEIVED_OR_SUCCEEDED and any(
            name in OWN_OUTCOME_TASKS for name in names
        )
        if not (routine or own_outcome):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


# What a worker or beat prints while it starts, replaced by its ready line (below):
# Celery's mingle with the other workers, its "Connected to" (a reconnection later
# still says it), "ready." and beat's "Starting...".
STARTUP_CHATTER.add(
    always=[
        ("celery.worker.consumer.mingle", None),
        ("celery.worker.control", "sync with %s"),
        ("celery.apps.worker", "%s ready."),
        ("celery.beat", "beat: Starting..."),
    ],
    until_ready=[("celery.worker.consumer.connection", "Connected to %s")],
)


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    settings = _running_app().settings
    handler = configure_logging(settings.log_level, settings.log_json)
    handler.filters.insert(0, RoutineTasksAtDebug())  # before the masking filter formats


@celeryd_init.connect
def _worker_starting(**_: object) -> None:
    """A worker's first signal, sent before Celery checks its privileges: the
    SecurityWarning it gives a worker run as root (docs/operations.md, "Startup") is one
    line in the worker's log format, like everything after it."""
    _configure_logging()
    log_python_warnings()


@worker_ready.connect
def _worker_ready(sender: Any = None, **_: object) -> None:
    """The worker's one line at start: its name, queues, pool and broker."""
    worker = sender.controller
    queues = ", ".join(sorted(sender.app.amqp.queues.consume_from))
    pool = worker.pool_cls.__module__.rsplit(".", 1)[-1]  # prefork, thread…
    say_ready(
        worker.hostname,
        f"queues {queues} ({pool} pool of {worker.concurrency})"
        f" on {without_password(sender.app.settings.broker_url)}",
    )


@worker_process_init.connect
def _new_pool_child(**_: object) -> None:
    app = _running_app()
    if hasattr(app, "database"):  # its pool was made before the fork
        app.database.dispose_after_fork()
    # Here, not in the parent: the span exporter's thread lives in the process that runs
    # the tasks (a pool child runs the steps and the relay).
    tracing.install(app.settings, role="worker")


@worker_process_shutdown.connect
@worker_shutdown.connect  # a thread pool's tasks ran in the worker's own process
def _pool_child_exit(**_: object) -> None:
    tracing.flush()


@worker_init.connect
def _worker_without_pool_children(sender: Any = None, **_: object) -> None:
    """A thread pool (the provider queue's worker) runs its tasks in the worker's own
    process, where no worker_process_init comes: its span exporter starts here."""
    if sender is not None and not issubclass(get_implementation(sender.pool_cls), PreforkPool):
        tracing.install(sender.app.settings, role="worker")


@beat_init.connect
def _beat_started(sender: Any = None, **_: object) -> None:
    # Beat's own jobs (top-up, stalled pipelines) start traces; the relay's ticks do not.
    tracing.install(sender.app.settings, role="beat")
    broker = without_password(sender.app.settings.broker_url)
    say_ready("beat", f"{len(sender.app.conf.beat_schedule)} jobs, sent to {broker}")


@before_task_publish.connect
def _leave_time_limits_to_the_worker(headers: dict | None = None, **_: object) -> None:
    """Celery 5.7 writes the publisher's task_time_limit and task_soft_time_limit into
    every message (its `timelimit` header), and a worker obeys the header over its own
    configuration: an API or beat process with other settings than the workers' would
    set their limits (the tests' 120 s over a worker's 4 s: no limit ever fired). The
    publisher's defaults are dropped, so the worker that runs a task applies its own
    limits; a limit set for one task or one call stays in the message."""
    conf = _running_app().conf
    defaults = (conf.task_time_limit, conf.task_soft_time_limit)
    if headers is not None and tuple(headers.get("timelimit") or ()) == defaults:
        headers["timelimit"] = (None, None)
