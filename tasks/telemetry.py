"""What workers report for /metrics (core.telemetry): step durations, retries, and which
queues each worker consumes.

Durations and retries come from Celery's own signals (task_prerun/task_postrun,
task_retry) in the process that ran the task, so no task code changes; each process
sends them in one round trip a second (PendingRuns). The consumer
heartbeat is a consumer bootstep, like Celery's own event heartbeat: it starts once the
worker consumes its queues and stops when the consumer stops (shutdown, or a lost broker
connection that restarts it), so a worker cut off from the broker stops counting.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery, bootsteps
from celery.signals import (
    task_postrun,
    task_prerun,
    task_retry,
    worker_process_shutdown,
    worker_shutdown,
)

from core.telemetry import StepRuns, Telemetry

log = logging.getLogger(__name__)

# How often a consuming worker says so; /metrics counts beats fresher than 3 of these.
CONSUMER_BEAT_SECONDS = 5.0
CONSUMER_FRESH_SECONDS = 3 * CONSUMER_BEAT_SECONDS

# A process sends its step durations and retries at most this often, in one round trip:
# per task it would be a Redis round trip of a dozen commands (about a tenth of the
# pipeline's Redis traffic), for a figure Prometheus scrapes every 15 s anyway.
FLUSH_SECONDS = 1.0

_started: dict[str, float] = {}  # task id -> perf_counter at prerun (this process)


def _telemetry(app: Any) -> Telemetry | None:
    """The app's (bootstrap.py attaches it); None for an app made otherwise."""
    return getattr(app, "telemetry", None)


class PendingRuns:
    """This process's runs and retries not yet in Redis. A daemon thread (started in
    the process that records, so after each fork) sends them every FLUSH_SECONDS; an
    eager task (`task.apply`: no worker whose shutdown would send the rest) sends at
    once; a pool child that exits sends the rest (worker_process_shutdown)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs = StepRuns()
        self.telemetry: Telemetry | None = None
        self.flusher_pid: int | None = None
        # A fork copies the lock as it is (held, perhaps, by the parent's flusher) and
        # the parent's unsent runs: the child starts afresh.
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.lock = threading.Lock()
        self.runs = StepRuns()

    def add(self, app: Any, record: Callable[[StepRuns], None], *, now: bool) -> None:
        telemetry = _telemetry(app)
        if telemetry is None:
            return
        with self.lock:
            self.telemetry = telemetry
            record(self.runs)
            if self.flusher_pid != os.getpid():
                self.flusher_pid = os.getpid()
                threading.Thread(target=self._flush_forever, name="telemetry", daemon=True).start()
        if now:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            runs, self.runs = self.runs, StepRuns()
            telemetry = self.telemetry
        if runs and telemetry is not None:
            telemetry.record(runs)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # Redis errors are dropped in record(); this keeps the thread
                log.warning("telemetry flush failed", exc_info=True)


pending = PendingRuns()


@task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id is not None else None
    if started is not None and task is not None:
        seconds = time.perf_counter() - started
        pending.add(task.app, lambda runs: runs.add_run(task.name, seconds), now=_eager(task))


@task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        pending.add(sender.app, lambda runs: runs.add_retry(sender.name), now=_eager(sender))


@worker_process_shutdown.connect
@worker_shutdown.connect  # a thread pool's tasks ran in the worker's own process
def _send_the_rest(**_: Any) -> None:
    pending.flush()


def _eager(task: Any) -> bool:
    return bool(getattr(task.request, "is_eager", False))


class QueueHeartbeat(bootsteps.StartStopStep):
    """Every CONSUMER_BEAT_SECONDS: this worker consumes these queues (Redis time)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.queues: list[str] = []

    def _beat(self, c: Any) -> None:
        # Read each time: `celery control add_consumer` / `cancel_consumer` change them.
        self.queues = [queue.name for queue in c.task_consumer.queues]
        telemetry = _telemetry(c.app)
        if telemetry is not None:
            telemetry.consumer_beat(c.hostname, self.queues)

    def start(self, c: Any) -> None:
        self._beat(c)
        self.tref = c.timer.call_repeatedly(CONSUMER_BEAT_SECONDS, self._beat, (c,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            c.timer.cancel(self.tref)
            self.tref = None
            telemetry = _telemetry(c.app)
            if telemetry is not None:
                telemetry.consumer_gone(c.hostname, self.queues)

    shutdown = stop


def install(app: Celery) -> None:
    """Called for each app by tasks.celery_app (the signal handlers connect on import)."""
    app.steps["consumer"].add(QueueHeartbeat)


@dataclass(frozen=True)
class QueueDepth:
    ready: int  # waiting to be delivered (Redis: every priority sub-list)
    unacked: int | None  # delivered, not acked yet (Redis only; None: not known here)


def queue_depths(app: Celery, queues: Iterable[str]) -> dict[str, QueueDepth]:
    """Each queue's messages, asked of the broker through kombu (Redis or RabbitMQ).

    A passive `queue_declare` answers the ready count on both: on Redis kombu sums the
    queue's priority sub-lists, on RabbitMQ it is the broker's own count. A queue no one
    has declared yet answers "not found" (Redis also says so for an empty queue, its list
    being gone): 0. Unacked messages (delivered to a worker, or a retry waiting for its
    countdown) are RabbitMQ's management API's business; on Redis kombu keeps them in one
    hash, each with its exchange and routing key, which name the queue (celeryconfig
    routes each queue by its own exchange and key)."""
    routes = {
        (queue.exchange.name, queue.routing_key): queue.name for queue in app.amqp.queues.values()
    }
    depths: dict[str, QueueDepth] = {}
    with app.connection_for_read() as connection:
        channel = connection.channel()
        try:
            ready: dict[str, int] = {}
            for name in queues:
                try:
                    ready[name] = channel.queue_declare(queue=name, passive=True).message_count
                except connection.channel_errors:
                    ready[name] = 0
                    channel = connection.channel()  # AMQP closes a channel on a 404
            unacked = (
                _redis_unacked(channel, routes)
                if connection.transport.driver_type == "redis"
                else None
            )
            for name in ready:
                count = None if unacked is None else unacked.get(name, 0)
                depths[name] = QueueDepth(ready[name], count)
        finally:
            channel.close()
    return depths


def _redis_unacked(channel: Any, routes: dict[tuple[str, str], str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    with channel.conn_or_acquire() as client:
        for raw in client.hvals(channel.unacked_key):
            _message, exchange, routing_key = json.loads(raw)
            queue = routes.get((exchange, routing_key), routing_key)
            counts[queue] = counts.get(queue, 0) + 1
    return counts
