"""Prometheus metrics of the API process(es).

Under gunicorn set PROMETHEUS_MULTIPROC_DIR so every worker's samples are summed.
Gauges that describe shared state (open dead letters, outbox backlog) are read from
PostgreSQL at scrape time, so any process reports the same truth.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.runtime import Runtime, runtime
from core.provider import PaymentProvider
from models import DeadLetter, DeadLetterStatus, OutboxMessage

request_log = logging.getLogger("tutorflow.requests")

REQUEST_LATENCY = Histogram(
    "tutorflow_http_request_duration_seconds",
    "API request latency by endpoint and status.",
    ["method", "endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class SharedStateCollector(Collector):
    def __init__(self, app: Runtime) -> None:
        self.app = app

    def collect(self):
        with self.app.database.session() as session:
            open_letters = session.scalar(
                select(func.count()).where(DeadLetter.status == DeadLetterStatus.OPEN)
            )
            oldest = session.scalar(
                select(
                    func.extract("epoch", func.now() - func.min(OutboxMessage.created_at))
                ).where(OutboxMessage.published_at.is_(None))
            )
        yield from _read_model_metrics(self.app)
        breaker = GaugeMetricFamily(
            "tutorflow_payment_provider_breaker_open",
            "1 while this process's circuit breaker to the payment provider is open "
            "(0.5 half-open, 0 closed).",
        )
        state = PaymentProvider.for_settings(self.app.settings).state
        breaker.add_metric([], {"open": 1.0, "half-open": 0.5}.get(state, 0.0))
        yield breaker
        yield GaugeMetricFamily(
            "tutorflow_dead_letters_open",
            "Dead letters waiting for an operator.",
            value=open_letters or 0,
        )
        yield GaugeMetricFamily(
            "tutorflow_outbox_oldest_unpublished_seconds",
            "Age of the oldest outbox row not yet published (0 when none).",
            value=float(oldest or 0),
        )


def _read_model_metrics(app: Runtime):
    try:
        stats = app.cache.read_model_stats()
    except redis.RedisError:
        return
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
