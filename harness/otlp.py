"""A collector's OTLP/HTTP traces endpoint, in a thread of the test or bench process.

The processes under test export their spans to it exactly as they would to a real
collector (TRACING=on, OTEL_EXPORTER_OTLP_ENDPOINT=its address). With `keep`, it decodes
each request with the OTLP package's own protobuf messages and keeps the spans (tests);
without, it answers and throws the body away (benchmarks: the cost measured is the
exporting processes', not a collector's).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness.processes import free_port, wait_until


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    name: str
    service: str  # the exporting process's service.name
    error: bool
    path: str  # a server span's URL path, else ""


class OtlpReceiver:
    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[Span] = []
        self.requests = 0
        self.bytes = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a collector serves

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.receive(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        return Handler

    def receive(self, body: bytes) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += len(body)
        if not self.keep:
            return
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        spans = []
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    spans.append(
                        Span(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            service=resource.get("service.name", ""),
                            error=span.status.code == span.status.STATUS_CODE_ERROR,
                            path=attributes.get("url.path") or attributes.get("http.target", ""),
                        )
                    )
        with self.lock:
            self.spans.extend(spans)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def find(self, predicate: Callable[[Span], bool]) -> Span | None:
        with self.lock:
            return next((s for s in self.spans if predicate(s)), None)

    def wait_for_trace(
        self, root: Callable[[Span], bool], complete: Callable[[list[Span]], bool], message: str
    ) -> tuple[Span, list[Span]]:
        """The first span matching `root` and its whole trace, once `complete` holds of
        the trace and no span in it lacks its parent (spans arrive in batches, from
        several processes, in no particular order)."""

        def done() -> bool:
            found = self.find(root)
            if found is None:
                return False
            spans = self.trace(found.trace_id)
            return complete(spans) and not orphans(spans)

        wait_until(done, 120, message)
        found = self.find(root)
        assert found is not None
        return found, self.trace(found.trace_id)


def orphans(spans: list[Span]) -> list[Span]:
    """Spans whose parent is not among `spans` (a root has none)."""
    ids = {s.span_id for s in spans}
    return [s for s in spans if s.parent_id and s.parent_id not in ids]


@contextmanager
def otlp_receiver(keep: bool = True) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(keep)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=10)


def tracing_env(receiver: OtlpReceiver, delay_ms: int | None = None) -> dict[str, str]:
    """The environment that makes a process trace to `receiver`."""
    env = {"TRACING": "on", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    if delay_ms is not None:
        env["OTEL_BSP_SCHEDULE_DELAY"] = str(delay_ms)
    return env
