"""Prometheus metrics of the API process(es), and of the whole pipeline.

Under gunicorn set PROMETHEUS_MULTIPROC_DIR so every worker's samples are summed.
Everything else (queues, dead letters, outbox, stalled payments, step durations, retries,
breakers, consumers) is read at scrape time from the source of truth (SharedStateCollector),
so any API process reports the same. Series and alerts: docs/operations.md, "Alerts and metrics".
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.runtime import Runtime, runtime
from celeryconfig import CONSUMED_QUEUES, QUEUES
from domain import fulfilment
from models import DeadLetter, DeadLetterStatus, OutboxMessage
from tasks.telemetry import CONSUMER_FRESH_SECONDS, queue_depths

log = logging.getLogger(__name__)
request_log = logging.getLogger("tutorflow.requests")

REQUEST_LATENCY = Histogram(
    "tutorflow_http_request_duration_seconds",
    "API request latency by endpoint and status.",
    ["method", "endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class SharedStateCollector(Collector):
    """Series read at scrape time from where the truth is kept, so every API process
    reports the same: PostgreSQL (dead letters, outbox, payments), the broker (queue
    depths, through kombu) and the cache Redis (what workers report: core.telemetry).
    A source that cannot be read drops its series and says so in
    tutorflow_metrics_source_up, instead of failing the whole scrape."""

    def __init__(self, app: Runtime) -> None:
        self.app = app

    def collect(self):
        up = GaugeMetricFamily(
            "tutorflow_metrics_source_up",
            "1 if /metrics could read this source at this scrape, else 0.",
            labels=["source"],
        )
        for source, read in (
            ("database", self._database),
            ("broker", self._broker),
            ("cache", self._cache),
        ):
            try:
                families = list(read())
            except Exception:  # any failure: report the source down, keep the rest
                log.warning("metrics: %s unavailable", source, exc_info=True)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _database(self):
        with self.app.database.session() as session:
            letters, letters_oldest = session.execute(
                select(
                    func.count(),
                    func.extract("epoch", func.now() - func.min(DeadLetter.last_failed_at)),
                ).where(DeadLetter.status == DeadLetterStatus.OPEN)
            ).one()
            backlog, backlog_oldest = session.execute(
                select(
                    func.count(),
                    func.extract("epoch", func.now() - func.min(OutboxMessage.created_at)),
                ).where(OutboxMessage.published_at.is_(None))
            ).one()
            confirmed = fulfilment.oldest_unfinished_confirmation(session)
            stalled = session.scalar(select(func.extract("epoch", func.now() - confirmed)))
        yield GaugeMetricFamily(
            "tutorflow_dead_letters_open", "Dead letters waiting for an operator.", value=letters
        )
        yield GaugeMetricFamily(
            "tutorflow_dead_letters_oldest_open_seconds",
            "Age of the oldest open dead letter, from its last failure (0 when none).",
            value=float(letters_oldest or 0),
        )
        yield GaugeMetricFamily(
            "tutorflow_outbox_unpublished",
            "Outbox rows not yet published to the broker.",
            value=backlog,
        )
        yield GaugeMetricFamily(
            "tutorflow_outbox_oldest_unpublished_seconds",
            "Age of the oldest outbox row not yet published (0 when none).",
            value=float(backlog_oldest or 0),
        )
        yield GaugeMetricFamily(
            "tutorflow_pipeline_oldest_unfinished_seconds",
            "Time since the oldest confirmed payment whose chain has not scheduled its "
            "sessions was confirmed (payments with an open dead letter excluded; 0 when none).",
            value=float(stalled or 0),
        )

    def _broker(self):
        depths = queue_depths(self.app.celery, QUEUES)
        messages = GaugeMetricFamily(
            "tutorflow_queue_messages",
            "Messages in each broker queue: ready (waiting) and, on Redis, unacked "
            "(delivered to a worker or waiting for a retry's countdown).",
            labels=["queue", "state"],
        )
        for queue, depth in depths.items():
            messages.add_metric([queue, "ready"], depth.ready)
            if depth.unacked is not None:
                messages.add_metric([queue, "unacked"], depth.unacked)
        yield messages

    def _cache(self):
        telemetry = self.app.telemetry
        yield from _read_model_metrics(self.app)
        consumers = GaugeMetricFamily(
            "tutorflow_queue_consumers",
            f"Workers that said within {CONSUMER_FRESH_SECONDS:g} s that they consume the queue.",
            labels=["queue"],
        )
        for queue, count in telemetry.consumers(CONSUMED_QUEUES, CONSUMER_FRESH_SECONDS).items():
            consumers.add_metric([queue], count)
        yield consumers
        durations = HistogramMetricFamily(
            "tutorflow_task_duration_seconds",
            "Run time of each task run (retries and failures included), all workers.",
            labels=["task"],
        )
        for task, histogram in telemetry.durations().items():
            durations.add_metric([task], histogram.buckets, histogram.total_seconds)
        yield durations
        retries = CounterMetricFamily(
            "tutorflow_task_retries", "Retries scheduled, by task, all workers.", labels=["task"]
        )
        for task, count in telemetry.retries().items():
            retries.add_metric([task], count)
        yield retries
        breakers = telemetry.breakers(self.app.settings.stripe_breaker_reset_seconds)
        states = GaugeMetricFamily(
            "tutorflow_payment_provider_breakers",
            "Processes (API and workers) whose payment-provider circuit breaker is open "
            "(refusing calls) or half-open (its next call is a probe).",
            labels=["state"],
        )
        states.add_metric(["open"], breakers.open)
        states.add_metric(["half_open"], breakers.half_open)
        yield states


def _read_model_metrics(app: Runtime):
    stats = app.cache.read_model_stats()
    total = CounterMetricFamily(
        "tutorflow_read_model_cache", "Read-model cache lookups.", labels=["view", "result"]
    )
    ratio = GaugeMetricFamily(
        "tutorflow_read_model_cache_hit_ratio",
        "Hits / lookups since Redis started.",
        labels=["view"],
    )
    for view, counts in stats.items():
        for result, value in counts.items():
            total.add_metric([view, result], value)
        lookups = counts.get("hit", 0) + counts.get("miss", 0)
        ratio.add_metric([view], counts.get("hit", 0) / lookups if lookups else 0.0)
    yield total
    yield ratio


def _registry(app: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry()
    if app.settings.prometheus_multiproc_dir:  # under gunicorn (gunicorn.conf.py)
        multiprocess.MultiProcessCollector(registry, path=app.settings.prometheus_multiproc_dir)
    else:
        registry.register(REQUEST_LATENCY)
    registry.register(SharedStateCollector(app))
    return registry


def init_app(app: Flask) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            seconds = time.perf_counter() - started
            endpoint = request.url_rule.rule if request.url_rule else "<unmatched>"
            REQUEST_LATENCY.labels(request.method, endpoint, response.status_code).observe(seconds)
            # One line per request (gunicorn's access log stays off); the request id
            # comes from the log context. The path only: query strings may hold tickets.
            request_log.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(seconds * 1000, 2),
                    "request_id": g.get("request_id"),
                },
            )
        return response


def metrics_response() -> Response:
    return Response(generate_latest(_registry(runtime())), mimetype=CONTENT_TYPE_LATEST)
