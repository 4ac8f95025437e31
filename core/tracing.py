"""OpenTelemetry: one trace per payment, from the HTTP confirm to the chain's last step.

The maintained instrumentations do the carrying: Flask's opens the request's span,
Celery's puts the W3C trace context in every published message's headers (a chain's
next link, a retry, the dead letter) and continues it in the worker. The one gap is the
outbox: a row the relay publishes seconds later, from another process. So the row keeps
the writer's `traceparent` (models.events) and the relay publishes it inside the context
taken back from it (`publishing`): the chain then continues the request's trace.

Off by default (TRACING unset): `install` returns at once, no OpenTelemetry module is
imported, no tracer provider or Celery signal handler is installed, Flask is not
wrapped, and every helper here is one check of a module global. On, spans are exported
by OTLP/HTTP in batches from a background thread (a dead collector costs a dropped
batch, never a request).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from core.config import Settings

# Beat's relay runs every few seconds: its own runs are not traced (one trace per tick
# would bury the payments' traces); what it publishes continues the payments' traces.
QUIET_ROOTS = frozenset(
    {"apply_async/tutorflow.beat.relay_outbox", "run/tutorflow.beat.relay_outbox"}
)
# Health probes and scrapes: no trace of their own.
UNTRACED_URLS = "healthz,readyz,metrics"

_provider: TracerProvider | None = None  # this process's, once `install` ran with tracing on


def enabled() -> bool:
    return _provider is not None


def install(settings: Settings, *, role: str, processor: SpanProcessor | None = None) -> bool:
    """This process's tracer provider (service `<OTEL_SERVICE_NAME>-<role>`) and the
    Celery instrumentation, once per process; False, and nothing done, when tracing is
    off. `processor` replaces the OTLP batch exporter (tests, benchmarks)."""
    global _provider
    if not settings.tracing:
        return False
    if _provider is not None:
        return True
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"{settings.otel_service_name}-{role}"}),
        sampler=ParentBased(_quiet_roots(TraceIdRatioBased(settings.tracing_sample_ratio))),
    )
    if processor is None:
        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint),
            schedule_delay_millis=settings.otel_bsp_schedule_delay_ms,
        )
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    return True


def instrument_app(app: Flask) -> None:
    """Wrap the Flask app (a span per request), if this process traces."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor.instrument_app(app, tracer_provider=_provider, excluded_urls=UNTRACED_URLS)


def flush() -> None:
    """Export what is buffered (a pool child about to exit)."""
    if _provider is not None:
        _provider.force_flush()


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, to store with an outbox row."""
    if _provider is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the active span, in hex: for logs and the timeline."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def current_trace_id() -> str | None:
    ids = current_ids()
    return ids[0] if ids else None


def publishing(
    outbox_id: int, correlation_id: str, *, traceparent: str | None = None
) -> AbstractContextManager[None]:
    """A span around one outbox message's publish: under the active span (the API's
    own publish after commit) or, given the row's `traceparent` (the relay), in the
    trace that wrote the row, linked to the relay's run. A failed publish ends the span
    with its error; the context is restored either way (Celery's instrumentation leaves
    its publish span attached when the broker raises)."""
    if _provider is None:
        return nullcontext()
    return _publishing(outbox_id, correlation_id, traceparent)


@contextmanager
def _publishing(outbox_id: int, correlation_id: str, traceparent: str | None) -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    parent = extract({"traceparent": traceparent}) if traceparent else None
    here = trace.get_current_span().get_span_context()
    links = [trace.Link(here)] if parent is not None and here.is_valid else None
    tracer = trace.get_tracer(__name__, tracer_provider=_provider)
    with tracer.start_as_current_span(
        "outbox relay" if parent is not None else "outbox publish",
        context=parent,
        links=links,
        attributes={"tutorflow.outbox_id": outbox_id, "tutorflow.correlation_id": correlation_id},
    ):
        yield


def _quiet_roots(delegate: Any) -> Any:
    """The delegate sampler's choice, except for the QUIET_ROOTS: dropped. (Defined
    here, on first use, so that tracing off imports nothing of the SDK.)"""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class QuietRoots(Sampler):
        def should_sample(self, parent_context, trace_id, name, *args: Any, **kwargs: Any):
            if name in QUIET_ROOTS:
                return SamplingResult(Decision.DROP)
            return delegate.should_sample(parent_context, trace_id, name, *args, **kwargs)

        def get_description(self) -> str:
            return f"QuietRoots{{{delegate.get_description()}}}"

    return QuietRoots()
