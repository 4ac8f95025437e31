"""One trace per payment (OpenTelemetry), proven on real processes.

The API runs under gunicorn and the chain on a real Celery worker with beat, both with
TRACING on and exporting by OTLP/HTTP, the production path, to a small OTLP receiver this
test runs (harness.otlp: it decodes the requests with the OTLP package's messages). Why
not the SDK's in-memory exporter in this process: it only sees this process's spans, and
the point is the hand-offs between processes (request → outbox row → relay → broker →
worker → next link, retry, dead letter). The API's broker is unreachable, so its
after-commit publish fails for real and the row is left to the relay: the chain can only
be in the request's trace if the relay continued the row's traceparent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
from sqlalchemy import select

from harness.otlp import OtlpReceiver, Span, orphans, otlp_receiver, tracing_env
from harness.processes import (
    ALL_BUT_PROVIDER,
    ROOT,
    ApiProcess,
    WorkerProcess,
    api_server,
    celery_worker,
    free_port,
    provider_worker,
)
from models import DeadLetter, OutboxKind, OutboxMessage
from models.events import TRACE_ID
from tests.conftest import ADMIN, open_session, student_auth
from tests.factories import make_course, make_payment, make_student, make_trainer

pytestmark = pytest.mark.worker

STEPS = (
    "verify_payment",
    "create_purchase",
    "allocate_trainer",
    "schedule_sessions",
    "refresh_student_views",
)


def runs(spans: list[Span], task: str) -> list[Span]:
    return [s for s in spans if s.name.startswith("run/") and s.name.endswith(task)]


def confirm_span(payment_id: str) -> Callable[[Span], bool]:
    """The API's span of this payment's confirm request: the root of its trace."""
    return lambda s: (
        s.service == "tutorflow-api"
        and s.path.endswith(f"/payments/{payment_id}/confirm")
        and not s.parent_id
    )


@dataclass
class Stack:
    receiver: OtlpReceiver
    api: ApiProcess
    worker: WorkerProcess
    provider: WorkerProcess  # the provider queue's: the verify step


@pytest.fixture(scope="module")
def traced_stack(engine) -> Iterator[Stack]:
    """API (gunicorn), the provider queue's worker and a worker with beat, tracing to
    the receiver; the API's broker is a port nobody listens on, the workers' the test's
    Redis."""
    with otlp_receiver() as receiver:
        tracing = {**tracing_env(receiver, delay_ms=100), "LOG_JSON": "1"}
        worker_env = {
            **tracing,
            "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
            "OUTBOX_RELAY_GRACE_SECONDS": "0",
        }
        api_env = {**tracing, "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
        # As in production, the verify step runs on the provider queue's thread pool:
        # its spans come from a worker with no pool children.
        with (
            provider_worker(env=worker_env) as provider,
            celery_worker(ALL_BUT_PROVIDER, env=worker_env, beat=True) as worker,
            api_server(api_env) as api,
        ):
            yield Stack(receiver, api, worker, provider)


def confirm_over_http(stack: Stack, student_id: int, payment_id: str) -> None:
    answer = requests.post(
        f"{stack.api.base}/api/v1/payments/{payment_id}/confirm",
        json={},
        headers=student_auth(student_id),
        timeout=30,
    )
    assert answer.status_code == 202, answer.text


def test_one_trace_from_the_http_confirm_to_the_last_step_across_a_relay_publish(
    traced_stack: Stack, committed
):
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)
        make_trainer(session, [course])
        student_id, payment_id = student.id, str(make_payment(session, student, course).id)

    confirm_over_http(traced_stack, student_id, payment_id)
    root, spans = traced_stack.receiver.wait_for_trace(
        confirm_span(payment_id),
        lambda spans: all(runs(spans, step) for step in STEPS),
        "the chain's spans never formed one trace with the confirm",
    )
    names = [s.name for s in spans]

    # The API's own publish failed (its broker is away) and says so in the trace; the
    # relay published the row later, from the worker, continuing the row's traceparent.
    # (The worker's own publishes after its commits, the e-mails the schedule step
    # owes, are in the trace too, and succeed.)
    publish = [s for s in spans if s.name == "outbox publish"]
    api_publish = [s for s in publish if s.service == "tutorflow-api"]
    assert api_publish and all(s.error for s in api_publish)
    assert all(not s.error for s in publish if s.service != "tutorflow-api")
    relay = [s for s in spans if s.name == "outbox relay"]
    assert len(relay) == 1 and relay[0].service == "tutorflow-worker", names
    with open_session() as session:
        row = session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.START_PIPELINE)
        ).one()
    assert row.published_at is not None
    assert row.traceparent is not None and row.traceparent.startswith(f"00-{root.trace_id}-")
    assert relay[0].parent_id == row.traceparent.split("-")[2]
    # The relay's own ticks (every second here) start no trace of their own.
    assert traced_stack.receiver.find(lambda s: "relay_outbox" in s.name) is None
    # Every step ran in the trace, the last one too, and nothing hangs loose.
    for step in STEPS:
        assert runs(spans, step), f"{step} not in the trace: {names}"
    assert orphans(spans) == []

    # The trace id is on the payment's timeline and in the worker's JSON logs.
    detail = requests.get(
        f"{traced_stack.api.base}/api/v1/payments/{payment_id}",
        headers=ADMIN,
        timeout=30,
    ).json()
    assert detail["timeline"]
    assert {event["payload"].get(TRACE_ID) for event in detail["timeline"]} == {root.trace_id}
    step_lines = [
        line
        for log in (traced_stack.provider.log(), traced_stack.worker.log())
        for line in map(json.loads, _json_lines(log))
        if line.get("correlation_id") == payment_id and line.get("message") == "step done"
    ]
    assert len(step_lines) >= len(STEPS) - 1
    assert {line["trace_id"] for line in step_lines} == {root.trace_id}


def test_retries_and_the_dead_letter_are_in_the_payments_trace(traced_stack: Stack, committed):
    with open_session() as session, session.begin():
        student, course = make_student(session), make_course(session)  # nobody teaches it
        student_id, payment_id = student.id, str(make_payment(session, student, course).id)

    confirm_over_http(traced_stack, student_id, payment_id)
    _, spans = traced_stack.receiver.wait_for_trace(
        confirm_span(payment_id),
        lambda spans: bool(runs(spans, "tutorflow.dead_letters.record")),
        "the dead letter never joined the confirm's trace",
    )
    # The first attempt and its 5 retries, each run under the publish of the one before.
    attempts = runs(spans, "tutorflow.pipeline.allocate_trainer")
    assert len(attempts) == 6, [s.name for s in spans]
    by_id = {s.span_id: s for s in spans}
    retried_by = [by_id[by_id[a.parent_id].parent_id] for a in attempts]
    assert sum(parent in attempts for parent in retried_by) == 5
    # The dead letter is recorded under the last attempt's publish.
    (record,) = runs(spans, "tutorflow.dead_letters.record")
    assert by_id[by_id[record.parent_id].parent_id] in attempts
    assert orphans(spans) == []
    with open_session() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert letter.correlation_id == payment_id


def _json_lines(text: str) -> Iterator[str]:
    return (line for line in text.splitlines() if line.startswith("{"))


def test_tracing_off_installs_nothing():
    """A fresh process with TRACING unset: the app and the Celery app built, the outbox
    row's traceparent default evaluated, and still no tracer provider, no tracing SDK,
    exporter or instrumentation module loaded, no Celery signal handler, the Flask app
    not wrapped. (redis-py imports OpenTelemetry's API and metrics SDK by itself when
    they are installed, for its own observability, off unless configured.)"""
    probe = """
import sys
import weakref
from flask import Flask
from celery import signals
from app import create_app
from core import tracing
from core.config import get_settings
from models.events import OutboxMessage
import tasks.celery_app
from tests.conftest import celery_app

app = create_app(get_settings(), testing=True)
default = OutboxMessage.__table__.c.traceparent.default.arg
def target(receiver):
    ref = receiver[1]
    return ref() if isinstance(ref, weakref.ReferenceType) else ref
receivers = [  # tracing's own: the metrics' signal handlers (tasks.telemetry) stay
    t for s in (signals.task_prerun, signals.before_task_publish) for r in s.receivers
    if (t := target(r)) is not None
    and getattr(t, "__module__", "").startswith(("opentelemetry", "core.tracing"))
]
ours = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter")
print(sorted(m for m in sys.modules if m.startswith(ours)))
trace = sys.modules.get("opentelemetry.trace")
print(trace is None or trace._TRACER_PROVIDER is None)
plain = getattr(app.wsgi_app, "__func__", None) is Flask.wsgi_app
print(tracing.enabled(), plain, default(None), len(receivers))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACING", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    modules, no_provider, state = done.stdout.strip().splitlines()[-3:]
    assert modules == "[]"
    assert no_provider == "True"
    assert state == "False True None 0"
