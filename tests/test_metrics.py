"""/metrics reports the pipeline's state from where it is kept: the broker's queues, the
database's dead letters, outbox and payments, and what workers wrote to the cache Redis
(step durations, retries, consumed queues, breakers). docs/operations.md, "Alerts and metrics"."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bootstrap import bootstrap
from core.provider import ProviderUnavailable
from domain.errors import TransientStepError
from harness.processes import celery_worker, free_port, wait_until
from models import OutboxKind, OutboxMessage
from tasks.base import PipelineTask
from tests.conftest import celery_app, settings
from tests.factories import make_course, make_dead_letter, make_payment, make_student

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def metrics(client: FlaskClient) -> Callable[[], Samples]:
    """Scrape /metrics. The queues and the cache start empty (conftest's db_connection)."""
    return lambda: scrape(client)


REDIS_BROKER = Connection(settings.broker_url).transport.driver_type == "redis"


def test_queue_depth_is_the_brokers_count_of_published_messages(metrics):
    """Five messages published to `maintenance` with no worker to take them (whatever
    the broker: Redis or RabbitMQ, both asked through kombu)."""
    for _ in range(5):
        celery_app.send_task("tutorflow.beat.prune_retention")
    samples = metrics()
    assert value(samples, "tutorflow_queue_messages", queue="maintenance", state="ready") == 5
    assert value(samples, "tutorflow_queue_messages", queue="pipeline", state="ready") == 0
    assert value(samples, "tutorflow_metrics_source_up", source="broker") == 1


@pytest.mark.skipif(not REDIS_BROKER, reason="kombu's Redis lists and unacked hash")
def test_on_redis_priority_lists_and_unacked_messages_count(metrics, redis_client):
    """Two of the five with a priority (kombu keeps those in a sub-list), then one
    taken by a consumer and not acked yet: ready 4, unacked 1; acked: gone."""
    for priority in (None, None, None, 9, 9):
        celery_app.send_task("tutorflow.beat.prune_retention", priority=priority)
    assert redis_client.llen("maintenance") == 3
    assert redis_client.llen("maintenance\x06\x169") == 2  # kombu's priority sub-list
    samples = metrics()
    assert value(samples, "tutorflow_queue_messages", queue="maintenance", state="ready") == 5
    assert value(samples, "tutorflow_queue_messages", queue="maintenance", state="unacked") == 0

    with Connection(settings.broker_url) as connection:
        channel = connection.channel()
        taken = channel.basic_get("maintenance", no_ack=False)
        assert taken is not None
        samples = metrics()
        assert value(samples, "tutorflow_queue_messages", queue="maintenance", state="ready") == 4
        assert value(samples, "tutorflow_queue_messages", queue="maintenance", state="unacked") == 1
        channel.basic_ack(taken.delivery_tag)
    samples = metrics()
    assert value(samples, "tutorflow_queue_messages", queue="maintenance", state="unacked") == 0


def test_ages_come_from_the_rows(metrics, db_session: Session):
    """An open dead letter parked 400 s ago, an outbox row unpublished for 90 s and a
    payment confirmed 700 s ago whose chain has not run: each age as PostgreSQL tells it
    (its now() is this test transaction's start, so the ages are exact)."""
    empty = metrics()
    for name in (
        "tutorflow_dead_letters_oldest_open_seconds",
        "tutorflow_outbox_oldest_unpublished_seconds",
        "tutorflow_pipeline_oldest_unfinished_seconds",
    ):
        assert value(empty, name) == 0

    now = db_session.scalar(select(func.now()))
    make_dead_letter(db_session, last_failed_at=now - timedelta(seconds=400))
    make_dead_letter(db_session, last_failed_at=now - timedelta(seconds=30))
    student, course = make_student(db_session), make_course(db_session)
    payment = make_payment(db_session, student, course, confirmed=True)
    payment.confirmed_at = now - timedelta(seconds=700)
    db_session.add(
        OutboxMessage(
            correlation_id=payment.id,
            kind=OutboxKind.START_PIPELINE,
            payload={"payment_id": str(payment.id)},
            created_at=now - timedelta(seconds=90),
        )
    )
    db_session.flush()

    samples = metrics()
    assert value(samples, "tutorflow_dead_letters_open") == 2
    assert value(samples, "tutorflow_dead_letters_oldest_open_seconds") == 400
    assert value(samples, "tutorflow_outbox_unpublished") == 1
    assert value(samples, "tutorflow_outbox_oldest_unpublished_seconds") == 90
    assert value(samples, "tutorflow_pipeline_oldest_unfinished_seconds") == 700
    assert value(samples, "tutorflow_metrics_source_up", source="database") == 1

    # A dead letter for the payment: an operator owns it, it no longer counts as stalled.
    make_dead_letter(db_session, correlation_id=str(payment.id))
    assert value(metrics(), "tutorflow_pipeline_oldest_unfinished_seconds") == 0


def test_breaker_state_of_any_process(metrics):
    """A provider that refuses connections opens this process's breaker after
    `fail_max` outages; /metrics (read from the cache Redis, as for a worker's breaker)
    counts it open, then not once the breaker closes."""
    down = dataclasses.replace(
        settings,
        stripe_api_base=f"http://127.0.0.1:{free_port()}",
        stripe_breaker_fail_max=2,
        stripe_breaker_reset_seconds=600,
    )
    provider = bootstrap(down).provider
    assert value(metrics(), "tutorflow_payment_provider_breakers", state="open") == 0
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            provider.retrieve_intent("pi_unknown")
    assert provider.state == "open"
    samples = metrics()
    assert value(samples, "tutorflow_payment_provider_breakers", state="open") == 1
    assert value(samples, "tutorflow_payment_provider_breakers", state="half_open") == 0
    provider.breaker.close()
    assert value(metrics(), "tutorflow_payment_provider_breakers", state="open") == 0


@celery_app.task(base=PipelineTask, bind=True, name="tests.metrics.flaky", max_retries=3)
def flaky(self: PipelineTask, *, correlation_id: str, failures: int) -> str:
    """Fails `failures` times with a transient error, then succeeds."""
    if self.request.retries < failures:
        raise TransientStepError("not yet")
    return "done"


def test_retries_and_runs_are_counted(metrics):
    """Run in-process (`apply`): what counts are Celery's own signals (task_retry,
    task_postrun), sent by the tracer a worker uses too; the real-worker test below
    proves they are connected in a worker process."""
    assert ("tutorflow_task_retries_total", frozenset({("task", flaky.name)})) not in metrics()
    flaky.apply(kwargs={"correlation_id": "c-1", "failures": 2}).get()
    samples = metrics()
    assert value(samples, "tutorflow_task_retries_total", task=flaky.name) == 2
    assert value(samples, "tutorflow_task_duration_seconds_count", task=flaky.name) == 3
    assert value(samples, "tutorflow_task_duration_seconds_bucket", task=flaky.name, le="+Inf") == 3


def test_a_real_worker_reports_its_queues_and_step_durations(metrics, committed):
    """A worker consuming `maintenance` counts as its consumer while it runs and not once
    it stopped; the beat job it ran shows in the duration histogram."""
    assert value(metrics(), "tutorflow_queue_consumers", queue="maintenance") == 0
    job = "tutorflow.beat.prune_retention"
    with celery_worker(queues="maintenance", concurrency=1):
        samples = metrics()
        assert value(samples, "tutorflow_queue_consumers", queue="maintenance") == 1
        assert value(samples, "tutorflow_queue_consumers", queue="pipeline") == 0
        celery_app.send_task(job)

        def ran() -> bool:
            key = ("tutorflow_task_duration_seconds_count", frozenset({("task", job)}))
            return metrics().get(key, 0) >= 1

        wait_until(ran, 60, "the worker's run never reached /metrics")
    assert value(metrics(), "tutorflow_queue_consumers", queue="maintenance") == 0


OPS = Path(__file__).resolve().parent.parent / "ops"


def test_rules_and_dashboard_read_only_series_that_metrics_exports(metrics):
    """A renamed series would leave an alert silent forever: every `tutorflow_*` name in
    the alert rules and the Grafana dashboard is one /metrics exports."""
    flaky.apply(kwargs={"correlation_id": "c-2", "failures": 1}).get()  # a histogram, a retry
    metrics()  # this request's latency shows in the next scrape
    exported = {name for name, _labels in metrics()}
    rules = yaml.safe_load((OPS / "prometheus/alerts.yml").read_text())
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = set(re.findall(r"\btutorflow_\w+", " ".join(expressions)))
    assert used and used <= exported, used - exported


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    """promtool runs the cases (`make test`); this holds the rule that each alert has both."""
    rules = yaml.safe_load((OPS / "prometheus/alerts.yml").read_text())
    tests = yaml.safe_load((OPS / "prometheus/alerts_test.yml").read_text())
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        outcomes = {
            bool(case["exp_alerts"]) for case in cases if case["alertname"] == rule["alert"]
        }
        assert outcomes == {True, False}, rule["alert"]
