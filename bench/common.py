"""Shared set-up: a database and Redis database of their own, rebuilt by the migrations.

Import this before any project module: it points the settings at the bench stores. It
also holds what several bench scripts need: the catalogue seed, a gunicorn and a
Celery worker in subprocesses, a live-event collector and the Markdown table.
"""

from __future__ import annotations

import os
import statistics

from bootstrap import bootstrap
from harness.serving import SandboxServer

os.environ.setdefault(
    "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow_bench"
)
os.environ.setdefault("BROKER_URL", "redis://127.0.0.1:6379/5")
os.environ.setdefault("CACHE_URL", os.environ["BROKER_URL"])
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("LOG_JSON", "0")
# All bench traffic comes from 127.0.0.1: the per-address limit of the public endpoints
# would answer 429 within seconds. A limit never reached keeps the limiter's own cost
# (its Redis counter per request) in the figures without tripping it.
os.environ.setdefault("RATE_LIMIT_PUBLIC", "1000000000/minute")
# The payment provider: the sandbox, in a thread of the bench process; the API and the
# workers the bench starts inherit its address.
os.environ.setdefault("STRIPE_API_BASE", SandboxServer().base)

import dataclasses
import http.client
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from core import tracing as otel
from core.config import get_settings
from core.redis_client import redis_client
from domain.catalogue import hours_for_all_trainers
from harness import brokers, processes
from harness.database import rebuild_database
from harness.otlp import OtlpReceiver, otlp_receiver, tracing_env
from harness.processes import ApiProcess, WorkerProcess, api_server

settings = get_settings()

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's gunicorn and celery sit beside its python
HOST = "127.0.0.1"
CHAIN_QUEUES = ("provider", "pipeline")  # where a chain's messages wait
SLOTS = 50  # distinct time slots: a trainer holds one allocation per slot
# The dev data and the tests': tutorflow, and tutorflow_test with every database named
# from it (per pytest -n process, tutorflow_test_gw0 …, with Redis 9, 10 …; the migration
# test's: harness/test_stores.py).
DEV_DATABASE = "tutorflow"
TEST_DATABASE_PREFIX = "tutorflow_test"
FORBIDDEN_REDIS_DBS = {0, 9, 10}


def _redis_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path else 0


def _refuse_shared_stores() -> None:
    """A bench drops schemas and flushes Redis: never on the dev or test stores."""
    database = make_url(settings.database_url).database
    if database == DEV_DATABASE or (database or "").startswith(TEST_DATABASE_PREFIX):
        raise SystemExit(f"bench refuses DATABASE_URL database {database!r}")
    for name, url in (("BROKER_URL", settings.broker_url), ("CACHE_URL", settings.cache_url)):
        if url.startswith("redis") and _redis_db(url) in FORBIDDEN_REDIS_DBS:
            raise SystemExit(f"bench refuses {name} Redis db {_redis_db(url)}")


_refuse_shared_stores()


def fresh_database() -> None:
    """Drop and rebuild the bench schema with the Alembic migrations."""
    rebuild_database(settings.database_url)


def bench_redis() -> redis.Redis:
    """The cache's Redis db (on a Redis broker, the queues' too)."""
    return redis_client(
        settings.cache_url, settings.redis_sentinel_master, socket_connect_timeout=2
    )


def flush_bench_redis() -> None:
    """Empty the bench Redis db (queues, cache keys): the guard above vetted its number;
    on RabbitMQ, purge the queues as well."""
    client = bench_redis()
    client.flushdb()
    client.close()
    if brokers.is_rabbitmq(settings.broker_url):
        brokers.purge_rabbitmq(settings.broker_url)


def redis_calls() -> int:
    """Commands the Redis server ran so far, INFO excluded. Server-wide (every db and
    client): a dev stack busy beside the bench inflates the deltas taken from it."""
    client = bench_redis()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(v["calls"] for name, v in stats.items() if name not in ("cmdstat_info", "info"))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table, ready for BENCHMARKS.md."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join([line, rule, *body])


def machine_note() -> str:
    """One line of context: a busy machine (a test run beside the bench) skews figures."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs, load average {load}; LOG_LEVEL={settings.log_level}; "
        f"API_WORKERS={os.environ.get('API_WORKERS', '2')}, "
        f"API_THREADS={os.environ.get('API_THREADS', '4')}"
    )


# --- catalogue ---------------------------------------------------------------------------


def trainers_for(payments: int) -> int:
    """Enough trainers that every payment finds a free (trainer, slot) with room to spare."""
    return max(50, -(-payments * 5 // (4 * SLOTS)))


def seed_catalogue(trainers: int, max_students: int = 100) -> int:
    """One course taught by `trainers` trainers; returns the course id."""
    with _engine().begin() as connection:
        course_id = connection.scalar(
            # Quarter-hour sessions: 50 students' slots fit one trainer's day.
            text(
                "INSERT INTO courses (title, session_minutes) VALUES ('Bench course', 15) "
                "RETURNING id"
            )
        )
        connection.execute(
            text(
                "INSERT INTO trainers (name, email, max_students) "
                "SELECT 'Trainer ' || t, 'trainer' || t || '@bench.example', :max_students "
                "FROM generate_series(1, :trainers) t"
            ),
            {"trainers": trainers, "max_students": max_students},
        )
        connection.execute(
            text(
                "INSERT INTO trainer_courses (trainer_id, course_id) "
                "SELECT id, :course_id FROM trainers"
            ),
            {"course_id": course_id},
        )
        connection.execute(hours_for_all_trainers())
    return course_id


def student_token(student_id: int) -> str:
    return bootstrap(settings).tokens.issue(student_id)


def pay_at_the_provider(payment_ids: list[uuid.UUID]) -> float:
    """Each payment gets its PaymentIntent (9900 EUR, its id in the metadata), paid with
    the test card, as the student's app would; seconds taken."""
    started = time.perf_counter()
    provider = bootstrap(settings).provider

    def pay(payment_id: uuid.UUID) -> dict[str, str]:
        intent = provider.create_intent(
            amount_cents=9900, currency="EUR", payment_id=str(payment_id)
        )
        provider.client.v1.payment_intents.confirm(
            intent.id, params={"payment_method": "pm_card_visa"}
        )
        return {"intent": intent.id, "id": str(payment_id)}

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(pay, payment_ids))
    with _engine().begin() as connection:
        connection.execute(
            text("UPDATE payments SET provider_payment_id = :intent WHERE id = CAST(:id AS uuid)"),
            rows,
        )
    return time.perf_counter() - started


def slow_provider(milliseconds: float) -> None:
    """Every provider call from now on waits this long at the sandbox, as the real
    provider's 100-300 ms round trips do (0: the sandbox answers at once again)."""
    mode = {"mode": "slow", "delay": milliseconds / 1000} if milliseconds else {"mode": "normal"}
    connection = http.client.HTTPConnection(urlsplit(os.environ["STRIPE_API_BASE"]).netloc)
    try:
        status, _ = send(connection, "POST", "/_sandbox/mode", mode)
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"the sandbox refused {mode}: {status}")


def add_provider_argument(parser: Any) -> None:
    parser.add_argument(
        "--provider-ms",
        type=float,
        default=0.0,
        help="each provider call waits this long at the sandbox (the real one: 100-300 ms)",
    )


def provider_round_trip_ms(samples: int = 200) -> float:
    """Median of the verify step's remote call (retrieve a PaymentIntent) here."""
    provider = bootstrap(settings).provider
    intent = provider.create_intent(amount_cents=9900, currency="EUR", payment_id="probe")
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        provider.retrieve_intent(intent.id)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def seed_one_students_payments(
    course_id: int, count: int, engine: Engine | None = None
) -> tuple[int, list[uuid.UUID]]:
    """One new student with `count` pending payments (the confirm benchmark: every
    request carries that student's token); (student, payments). In `engine`'s database
    (the bench's by default)."""
    with (engine or _engine()).begin() as connection:
        student_id = connection.scalar(
            text(
                "INSERT INTO students (name, email, timezone) VALUES "
                "('Bench payer', 'payer-' || gen_random_uuid() || '@bench.example', 'UTC') "
                "RETURNING id"
            )
        )
        ids = connection.scalars(
            text(
                "INSERT INTO payments (student_id, course_id, tier, time_slot, amount_cents, "
                "currency) SELECT :student, :course, 10, time '09:00', 9900, 'EUR' "
                "FROM generate_series(1, :count) RETURNING id"
            ),
            {"student": student_id, "course": course_id, "count": count},
        ).all()
    return student_id, list(ids)


def seed_pending_payments(
    course_id: int, count: int, timezone: str = "Europe/Berlin"
) -> list[tuple[uuid.UUID, int]]:
    """`count` new students with one pending payment each, set-based; (payment, student).

    One student per payment: a student holds a course once. Slots cycle over 06:00 +
    15 min x (i % 50) so that a trainer's allocations never collide on a slot.
    """
    if count <= 0:
        return []
    with _engine().begin() as connection:
        first = connection.scalar(text("SELECT coalesce(max(id), 0) + 1 FROM students"))
        rows = connection.execute(
            text(
                """
                WITH new_students AS (
                    INSERT INTO students (name, email, timezone)
                    SELECT 'Student ' || n, 'student' || n || '@bench.example', :timezone
                    FROM generate_series(:first, :last) n
                    RETURNING id
                )
                INSERT INTO payments (student_id, course_id, tier, time_slot, amount_cents,
                                      currency)
                SELECT id, :course_id, 10,
                       time '06:00' + ((id - 1) % :slots) * interval '15 minutes', 9900, 'EUR'
                FROM new_students
                RETURNING id, student_id
                """
            ),
            {
                "first": first,
                "last": first + count - 1,
                "timezone": timezone,
                "course_id": course_id,
                "slots": SLOTS,
            },
        ).all()
    return sorted(((r.id, r.student_id) for r in rows), key=lambda r: r[1])


_bench_engine = None
# The bench process's connections say so (pg_stat_activity.application_name): a bench
# that reads PostgreSQL's CPU per backend leaves its own out (bench.stack).
BENCH_APPLICATION = "tutorflow-bench"


def _engine():
    # The bench process's own engine (project code uses models.get_engine: same URL).
    global _bench_engine
    if _bench_engine is None:
        _bench_engine = create_engine(
            settings.database_url, connect_args={"application_name": BENCH_APPLICATION}
        )
    return _bench_engine


def execute(sql: str, **params: Any) -> None:
    with _engine().begin() as connection:
        connection.execute(text(sql), params)


def scalar(sql: str, **params: Any) -> Any:
    with _engine().connect() as connection:
        return connection.scalar(text(sql), params)


def create_reference_table() -> None:
    """The small table of reference (b) in bench/reference_wsgi.py (bench DB only)."""
    with _engine().begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_reference ("
                " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " token text NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            )
        )


def count_scheduled(window: int | None = None) -> int:
    """Allocations that have their full window of sessions on the calendar."""
    return scalar(
        "SELECT count(*) FROM (SELECT allocation_id FROM tutoring_sessions "
        "GROUP BY allocation_id HAVING count(*) >= :window) full_window",
        window=window or settings.session_window,
    )


# --- processes ---------------------------------------------------------------------------


@contextmanager
def gunicorn(app: str = "bench.reference_wsgi:app") -> Iterator[ApiProcess]:
    """The project's gunicorn.conf.py (its worker count) on a free loopback port."""
    with api_server({}, app=app, workers=None) as server:
        yield server


@dataclass
class Workers:
    """The pipeline's prefork worker and the provider queue's thread-pool worker."""

    pipeline: WorkerProcess
    provider: WorkerProcess

    @property
    def pids(self) -> list[int]:
        return [self.pipeline.process.pid, self.provider.process.pid]

    def log(self) -> str:
        return self.pipeline.log() + self.provider.log()

    def ready_at(self) -> float:
        """When the later of the two said it was ready (its worker_ready signal)."""
        return max(self.pipeline.ready_at(), self.provider.ready_at())


@contextmanager
def celery_worker(concurrency: int = 2) -> Iterator[Workers]:
    """Real workers with the production flags (the Procfile's `worker` and `provider`),
    plus the bench's no-op tasks; `ready_at()` starts the clock of timed work."""
    with (
        processes.provider_worker(include=("bench.noop_tasks",), loglevel="WARNING") as provider,
        processes.celery_worker(
            queues=processes.ALL_BUT_PROVIDER,
            concurrency=concurrency,
            include=("bench.noop_tasks",),
            loglevel="WARNING",
        ) as pipeline,
    ):
        yield Workers(pipeline, provider)


def http_request(
    port: int, method: str, path: str, body: object | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One request on a new connection; (status, parsed JSON or None)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        return send(connection, method, path, body)
    finally:
        connection.close()


def send(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: object | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    """A request on a keep-alive connection, as `token`'s bearer (the admin's by
    default); (status, parsed JSON or None)."""
    headers = {"Authorization": f"Bearer {token or settings.admin_token}"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    raw = response.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return response.status, parsed


@dataclass
class LiveEvents:
    """Collects live events (student channels, the no-op chain's done channel) in a thread.

    Redis pub/sub channels are server-wide, not per db: callers filter on their own ids.
    """

    patterns: tuple[str, ...] = ("student:*:events",)
    channels: tuple[str, ...] = ()
    on_event: Callable[[float, str, dict[str, Any]], None] | None = None
    url: str | None = None  # another Redis than the bench's (a stack's own server)
    received: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LiveEvents:
        # Keep the client: once collected, it disconnects the pool the pubsub reads from.
        self._client = redis.Redis.from_url(self.url) if self.url else bench_redis()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        if self.patterns:
            self._pubsub.psubscribe(*self.patterns)
        if self.channels:
            self._pubsub.subscribe(*self.channels)
        self._thread = threading.Thread(target=self._run, name="live-events", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message is None or message["type"] not in ("message", "pmessage"):
                continue
            at = time.time()  # wall clock: compared with the worker's stamps too
            try:
                data = json.loads(message["data"])
            except ValueError:
                continue
            channel = message["channel"].decode()
            self.received.append((at, channel, data))
            if self.on_event is not None:
                self.on_event(at, channel, data)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll until `predicate()`; False once `timeout` seconds passed (always bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- tracing on/off ----------------------------------------------------------------------

# The marker of a script's machine-readable summary line (bench.run_all sets the
# tracing-off and tracing-on figures side by side from them).
SUMMARY = "BENCHJSON "


def add_tracing_argument(parser: Any) -> None:
    parser.add_argument(
        "--tracing",
        choices=["off", "on"],
        default="off",
        help="on: every process traces (OTLP/HTTP to a local sink that discards the spans)",
    )


@contextmanager
def tracing(mode: str, *, here: bool = False) -> Iterator[OtlpReceiver | None]:
    """With "on": the gunicorn and workers started inside trace as in production
    (TRACING=on, the default batch exporter), exporting by OTLP/HTTP to a sink in this
    process that answers and discards; with `here`, this process traces too (the
    pipeline bench confirms in-process). The sink is cheap beside the exporting side."""
    if mode != "on":
        yield None
        return
    with otlp_receiver(keep=False) as sink:
        env = tracing_env(sink)
        os.environ.update(env)
        if here:
            otel.install(
                dataclasses.replace(
                    settings, tracing=True, otel_exporter_otlp_endpoint=sink.endpoint
                ),
                role="bench",
            )
        try:
            yield sink
        finally:
            otel.flush()
            for name in env:
                os.environ.pop(name, None)


def root_span(name: str) -> AbstractContextManager[object]:
    """A span with no parent (what the API's request span is), when this process traces."""
    if not otel.enabled():
        return nullcontext()
    from opentelemetry import trace

    return trace.get_tracer("bench").start_as_current_span(name)


def tracing_note(mode: str, sink: OtlpReceiver | None) -> str:
    if sink is None:
        return f"tracing: {mode}"
    return (
        f"tracing: on (TRACING=on, OTLP/HTTP batches every {settings.otel_bsp_schedule_delay_ms}"
        f" ms to a local sink that discards them: {sink.requests:,} export requests, "
        f"{sink.bytes / 1e6:.1f} MB)"
    )


def print_summary(script: str, mode: str, figures: dict[str, float]) -> None:
    print(SUMMARY + json.dumps({"script": script, "tracing": mode, "figures": figures}))


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process and its reaped children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / TICKS


def _process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def _postmaster() -> int:
    """The PostgreSQL server's pid: its backends are its children, and an ended
    backend's CPU moves into the postmaster's children's time, so the tree's sum holds."""
    data = scalar("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
    return int(Path(data, "postmaster.pid").read_text().split()[0])


@dataclass
class CpuUse:
    """CPU seconds per part of the system over `elapsed` seconds of wall time."""

    seconds: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def percent(self) -> dict[str, float]:
        """Each part's share of one core."""
        return {part: 100 * used / self.elapsed for part, used in self.seconds.items()}


class CpuSplit:
    """Where the CPU went while `measure()` ran: the API's and the worker's process
    trees, PostgreSQL's, Redis and this process. CPU time, unlike a rate, does not move
    with what the rest of a shared host takes (steal), so it compares runs better."""

    def __init__(self, worker_pids: list[int], *, api_pid: int | None = None) -> None:
        postgres = _postmaster()
        redis_pid = int(bench_redis().info("server")["process_id"])
        self.parts: dict[str, Callable[[], list[int]]] = {}
        if api_pid is not None:
            self.parts["API"] = lambda: _process_tree(api_pid)
        self.parts["workers"] = lambda: [p for pid in worker_pids for p in _process_tree(pid)]
        self.parts["PostgreSQL"] = lambda: _process_tree(postgres)
        self.parts["Redis"] = lambda: [redis_pid]
        self.parts["load generator"] = lambda: [os.getpid()]

    def _sample(self) -> dict[str, float]:
        return {part: sum(map(_cpu_seconds, pids())) for part, pids in self.parts.items()}

    @contextmanager
    def measure(self) -> Iterator[CpuUse]:
        use = CpuUse()
        before, started = self._sample(), time.monotonic()
        yield use
        after, use.elapsed = self._sample(), time.monotonic() - started
        use.seconds = {part: after[part] - before[part] for part in after}
