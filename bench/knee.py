"""The knee: open-loop offered load stepping up until the stack cannot keep up, and
where a payment's CPU goes.

The realistic flow (the default) runs the whole stack as `make up` does (bench.stack:
every Procfile process, the sandbox sending its webhooks, the SMTP sink) and makes each
payment as a real client does. Before a step (not timed), each new student checks out
through the API (a trainer's place held, the PaymentIntent created at the sandbox). At
its scheduled instant the student pays the PaymentIntent at the sandbox (the browser's
publishable key and client secret, as Stripe.js does; the sandbox then sends its signed
`payment_intent.succeeded` webhook to the API, as Stripe does), then the app confirms
(POST /api/v1/payments/{id}/confirm); the pipeline runs, and both e-mails go out through
the SMTP sink. One cheap poller (a query every --poll-ms on the bench's own connection)
sees each student's sessions committed in PostgreSQL.

Per step it prints confirm p50/p99, confirm → sessions p50/p95/p99 (and pay → sessions
p50), 5xx and errors, the deepest chain queue, and whether it drained: every payment's
sessions and both e-mails sent, how long after the step's last confirm. The knee is the
highest rate with confirm p99 ≤ 50 ms, confirm → sessions p95 ≤ 150 ms + the provider's
latency, everything fulfilled and drained; steps stop at the first rate past it
(--all-rates runs them all), then one step at 1.5 x the knee shows how it degrades.

CPU per payment per process kind: each kind's process tree read from /proc
(utime + stime, ended children included) from a step's first offer until it drained,
divided by the payments fulfilled; PostgreSQL is the bench database's backends; Redis
is the stack's own redis-server. Beside it, the same stack's idle CPU per second and
the bare 5-task no-op Celery chain (POST /bench/ref/chain through the same API,
bench/noop_tasks.py) offered at the same rate: its CPU per chain and its latency.
With pg_stat_statements loaded (shared_preload_libraries), the statements of the step
at --cpu-rate per payment. With --profile DIR, py-spy records every Python process kind
during that step (DIR/<kind>.raw trimmed, DIR/<kind>.txt summaries).

The lab flow (--flow lab), the old knee: payments paid at the provider beforehand (no
webhook), no checkout or hold, confirm, clients reading the home screen after each live
event and every --poll-ms; only the pipeline and provider workers run (no e-mails, no
Flower, no beat); its reference is the no-op chain at every rate.

With --provider-ms L every provider call waits L ms at the sandbox, as the real
provider's 100-300 ms do (the student's payment, the checkout and the verify step's
read alike).

    python -m bench.knee [--rates 8,10,12,15,20,25,30] [--seconds 20] [--provider-ms 0]
                         [--cpu-rate 10] [--profile bench/profiles] [--all-rates]
    python -m bench.knee --flow lab [--rates 10,15,20,25,30,35] [--seconds 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy import text
from sqlalchemy.engine import make_url

import bench.common as common
from actions import payments as payment_actions
from bench import pyspy
from bench import stack as stacks
from bench.e2e_latency import Client, Track, latencies, open_loop, payment_job, reference_job
from bench.noop_tasks import DONE_CHANNEL
from bootstrap import Services
from domain.payments import Order
from harness.brokers import queue_length

HOME = "/api/v1/students/{student_id}/home"
CONFIRM_P99 = 0.050
# Confirm → visible, beyond what the provider takes: with --provider-ms L the sessions
# cannot show before the provider answered, so the bound is 150 ms + L.
VISIBLE_P95 = 0.150
LAB_RATES = "10,15,20,25,30,35"
LAB_POLL_MS = 500.0
REALISTIC_RATES = "8,10,12,15,20,25,30"
REALISTIC_POLL_MS = 10.0
TIER = 10
PRICE_CENTS = 9900
CARD = "pm_card_visa"
MAILS_PER_PAYMENT = 2  # the student's confirmation and the trainer's new-student notice


def _step_row(
    rate: float | str, tracks: list[Track], depth: int, drained: str, cpu: dict[str, float]
) -> list:
    confirm = common.summary(latencies(tracks, "answered"))
    visible = common.summary(latencies(tracks, "visible"))
    seen = len(latencies(tracks, "visible"))
    failed = sum(1 for t in tracks if t.status >= 500) + sum(t.errors for t in tracks)
    return [
        rate if isinstance(rate, str) else f"{rate:g}",
        f"{seen}/{len(tracks)}",
        failed,
        common.ms(confirm["p50"]),
        common.ms(confirm["p99"]),
        common.ms(visible["p50"]),
        common.ms(visible["p95"]),
        common.ms(visible["p99"]),
        depth,
        drained,
        " / ".join(f"{cpu[k]:.0f}" for k in cpu),
    ]


def _drained(tracks: list[Track]) -> str:
    """Seconds from the step's last confirm until its last payment's sessions showed."""
    shown = [t.visible for t in tracks if t.visible is not None]
    if len(shown) < len(tracks):
        return "not all"
    return f"{max(shown) - max(t.sent for t in tracks):.1f}"


def _wait_for_an_empty_queue() -> None:
    common.wait_for(
        lambda: queue_length(common.settings.broker_url, *common.CHAIN_QUEUES) == 0, 60, 0.5
    )


def _healthy(tracks: list[Track], provider_seconds: float = 0.0) -> bool:
    answered = latencies(tracks, "answered")
    visible = latencies(tracks, "visible")
    return (
        len(visible) == len(tracks)
        and common.percentile(answered, 99) <= CONFIRM_P99
        and common.percentile(visible, 95) <= VISIBLE_P95 + provider_seconds
    )


def lab(args: argparse.Namespace) -> None:
    """The lab flow: paid beforehand, confirm, home reads; pipeline and provider workers."""
    rates = [float(r) for r in (args.rates or LAB_RATES).split(",")]
    counts = [max(1, int(rate * args.seconds)) for rate in rates]
    warmup = 20
    poll = (args.poll_ms if args.poll_ms is not None else LAB_POLL_MS) / 1000

    common.fresh_database()
    common.flush_bench_redis()
    # The overload step: 1.5 times the knee, at most 1.5 times the highest rate.
    overload_count = int(1.5 * max(rates) * args.seconds)
    total = sum(counts) + warmup + overload_count
    course_id = common.seed_catalogue(trainers=common.trainers_for(total))
    seeded = common.seed_pending_payments(course_id, total)
    common.pay_at_the_provider([p for p, _ in seeded])
    common.slow_provider(args.provider_ms)
    tracks = [Track(str(p), student_id=s, token=common.student_token(s)) for p, s in seeded]
    by_key = {t.key: t for t in tracks}
    reference_steps = [[Track(uuid.uuid4().hex) for _ in range(n)] for n in counts]
    by_key.update({t.key: t for step in reference_steps for t in step})

    def on_event(at: float, channel: str, data: dict) -> None:
        track = by_key.get(data.get("payment_id") or data.get("token") or "")
        if track is None:
            return
        if channel == DONE_CHANNEL and track.done_event is None:
            track.done_event = at
        track.wake.set()

    print(common.machine_note())
    print(f"each provider call waits {args.provider_ms:g} ms at the sandbox")
    payment_rows, reference_rows, knee, ceiling = [], [], None, None
    with (
        common.LiveEvents(
            patterns=("student:*:events",), channels=(DONE_CHANNEL,), on_event=on_event
        ),
        common.gunicorn("bench.reference_wsgi:app") as server,
        common.celery_worker(concurrency=args.concurrency) as worker,
    ):
        client = Client(server.port)
        split = common.CpuSplit(worker.pids, api_pid=server.process.pid)
        reader = random.Random(7)

        def visible(track: Track) -> bool:
            path = HOME.format(student_id=track.student_id)
            # A share of extra reads on the first look: students opening the app.
            if track.polls == 1 and reader.random() < args.reads_per_payment:
                client.request("GET", path, token=track.token)
            status, body = client.request("GET", path, token=track.token)
            return status == 200 and bool((body or {}).get("upcoming_sessions"))

        job = payment_job(client, visible, poll, args.timeout)
        offset = warmup
        open_loop(tracks[:warmup], 10, job, 64)  # warms pools; not reported
        for rate, count in zip(rates, counts, strict=True):
            step = tracks[offset : offset + count]
            offset += count
            threads = int(min(512, max(32, rate * args.timeout)))
            with split.measure() as cpu:
                depth = open_loop(step, rate, job, threads)
            payment_rows.append(_step_row(rate, step, depth, _drained(step), cpu.percent))
            _wait_for_an_empty_queue()
            if _healthy(step, args.provider_ms / 1000):
                knee = rate
            print(f"step {rate:g}/s done", flush=True)
        if knee is not None:
            # Past the knee: confirms must still answer (the outbox takes the burst),
            # nothing may fail, and the queue must drain once the burst is over.
            rate = 1.5 * knee
            step = tracks[offset : offset + int(rate * args.seconds)]
            with split.measure() as cpu:
                depth = open_loop(step, rate, job, int(min(512, max(32, rate * args.timeout))))
            payment_rows.append(
                _step_row(f"{rate:g} (1.5 x knee)", step, depth, _drained(step), cpu.percent)
            )
        reference = reference_job(client, args.timeout)
        for rate, step in zip(rates, reference_steps, strict=True):
            for track in step:
                track.visible = None
            with split.measure() as cpu:
                depth = open_loop(step, rate, reference, int(min(512, max(32, rate * 20))))
            for track in step:
                track.visible = track.done_event
            reference_rows.append(_step_row(rate, step, depth, _drained(step), cpu.percent))
            _wait_for_an_empty_queue()
            if _healthy(step):
                ceiling = rate
    common.flush_bench_redis()

    headers = [
        "offered /s",
        "seen",
        "5xx/errors",
        "confirm p50",
        "confirm p99",
        "visible p50",
        "visible p95",
        "visible p99",
        "max queue",
        "last shown after last confirm, s",
        "CPU % API / workers / PostgreSQL / Redis / load gen",
    ]
    print(
        f"\nlab flow: open loop, {args.seconds:g} s per step; worker -c {args.concurrency}; "
        "visible = the home screen shows sessions (read after each live event and every "
        f"{poll * 1000:g} ms, plus "
        f"{args.reads_per_payment:g} extra home read per payment); milliseconds\n"
    )
    print("Payments (confirm → sessions visible):\n")
    print(common.table(headers, payment_rows))
    print("\nReference: bare 5-task no-op chain (POST → answered; POST → done event):\n")
    print(common.table(headers, reference_rows))
    print(
        f"\nknee (confirm p99 ≤ 50 ms, visible p95 ≤ {150 + args.provider_ms:g} ms): "
        f"{knee if knee is not None else 'below the lowest step'} payments/s; "
        f"the no-op chain's: {ceiling if ceiling is not None else 'below the lowest step'}/s"
    )


# --- the realistic flow -----------------------------------------------------------------


@dataclass
class Purchase(Track):
    """One student's payment in the realistic flow; Track's `sent` and `answered` are
    the confirm's, `visible` when the poller saw the sessions committed."""

    intent_id: str = ""
    client_secret: str = ""
    pay_sent: float | None = None
    paid: float | None = None
    pay_status: int = 0


class Browser:
    """The students' browsers at the provider (Stripe.js): the publishable key and the
    PaymentIntent's client secret; a keep-alive connection per thread."""

    def __init__(self, base_url: str) -> None:
        self.netloc = urlsplit(base_url).netloc
        self.key = common.settings.stripe_publishable_key
        self.local = threading.local()

    def pay(self, purchase: Purchase) -> int:
        body = urlencode({"payment_method": CARD, "client_secret": purchase.client_secret})
        headers = {
            "Authorization": f"Bearer {self.key}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        for attempt in range(2):
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(self.netloc, timeout=10)
                self.local.connection = connection
            try:
                connection.request(
                    "POST", f"/v1/payment_intents/{purchase.intent_id}/confirm", body, headers
                )
                response = connection.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class SessionsPoller:
    """One thread, one query every `interval` on the bench's own connection: which of
    the students waiting have their window of sessions committed."""

    QUERY = text(
        "/* bench poller */ SELECT student_id FROM tutoring_sessions "
        "WHERE student_id = ANY(:ids) GROUP BY student_id HAVING count(*) >= :window"
    )

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.waiting: dict[int, Purchase] = {}
        self.lock = threading.Lock()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def watch(self, purchase: Purchase) -> None:
        with self.lock:
            self.waiting[purchase.student_id] = purchase

    def __enter__(self) -> SessionsPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        engine = common._engine().execution_options(isolation_level="AUTOCOMMIT")
        window = common.settings.session_window
        with engine.connect() as connection:
            while not self._stop.wait(self.interval):
                with self.lock:
                    ids = list(self.waiting)
                if not ids:
                    continue
                seen = connection.execute(self.QUERY, {"ids": ids, "window": window}).scalars()
                now = time.time()
                self.polls += 1
                with self.lock:
                    for student_id in seen:
                        purchase = self.waiting.pop(student_id, None)
                        if purchase is not None:
                            purchase.visible = now
                            purchase.wake.set()


def seed_realistic(total: int) -> int:
    """The bench catalogue, with the tier's price (a checkout quotes it); the course."""
    course_id = common.seed_catalogue(trainers=common.trainers_for(total))
    common.execute(
        "INSERT INTO course_prices (course_id, tier, amount_cents) VALUES (:c, :t, :a)",
        c=course_id,
        t=TIER,
        a=PRICE_CENTS,
    )
    return course_id


def new_students(count: int) -> list[tuple[int, str]]:
    """`count` new students (Europe/Berlin), each with the time it will ask for:
    06:00 + 15 min x (id % 50), so a trainer's places never collide on a slot."""
    with common._engine().begin() as connection:
        ids = connection.scalars(
            text(
                "INSERT INTO students (name, email, timezone) "
                "SELECT 'Student ' || n, 'student-' || gen_random_uuid() || '@bench.example', "
                "'Europe/Berlin' FROM generate_series(1, :count) n RETURNING id"
            ),
            {"count": count},
        ).all()
    slots = [(i, i % common.SLOTS) for i in sorted(ids)]
    return [(i, f"{6 + k // 4:02d}:{15 * (k % 4):02d}") for i, k in slots]


def checkout(client: Client, course_id: int, count: int) -> list[Purchase]:
    """Each new student checks out through the API (8 at a time): a trainer's place
    held, the PaymentIntent created at the sandbox. Not timed."""

    def one(student: tuple[int, str]) -> Purchase:
        student_id, slot = student
        token = common.student_token(student_id)
        status, body = client.request(
            "POST",
            "/api/v1/payments",
            {"course_id": course_id, "tier": TIER, "time_slot": slot},
            token=token,
        )
        if status != 201:
            raise RuntimeError(f"checkout of student {student_id} at {slot}: {status} {body}")
        secret = body["client_secret"]
        return Purchase(
            body["id"],
            student_id=student_id,
            token=token,
            intent_id=secret.split("_secret_")[0],
            client_secret=secret,
        )

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, new_students(count)))


def checked_out_here(services: Services, course_id: int, count: int) -> list[uuid.UUID]:
    """`count` new students check out in this process (a trainer's place held, the
    PaymentIntent made at the sandbox) and pay at the sandbox, as in the knee; their
    payments' ids, in order. For the in-process profiles (bench.eager_profile,
    bench.api_profile); not timed."""
    payments = []
    for student_id, slot in new_students(count):
        hour, minute = map(int, slot.split(":"))
        answer = payment_actions.checkout(
            services.api_database,
            services.provider,
            Order(student_id, course_id, TIER, dt.time(hour, minute)),
            idempotency_key=None,
            fingerprint="",
            render=lambda payment, *_: {"id": payment.id},
            hold_minutes=common.settings.hold_minutes,
        )
        payments.append(answer.body["id"])
    common.pay_at_the_provider(payments)
    return payments


def purchase_job(client: Client, browser: Browser, poller: SessionsPoller) -> Any:
    def job(purchase: Purchase) -> None:
        poller.watch(purchase)
        purchase.pay_sent = time.time()
        try:
            purchase.pay_status = browser.pay(purchase)
        except (OSError, http.client.HTTPException):
            purchase.errors += 1
            return
        purchase.paid = time.time()
        if purchase.pay_status != 200:
            purchase.errors += 1
            return
        purchase.sent = time.time()
        try:
            path = f"/api/v1/payments/{purchase.key}/confirm"
            purchase.status, _ = client.request("POST", path, {}, token=purchase.token)
        except (OSError, http.client.HTTPException):
            purchase.errors += 1
            return
        purchase.answered = time.time()

    return job


def offer(stack: stacks.Stack, tracks: list, rate: float, job: Any) -> tuple[int, float]:
    """job(track) at t0 + i / rate whatever the earlier ones are doing (open loop); the
    deepest chain queue seen meanwhile, and how late the latest start was (s)."""
    stop = threading.Event()
    depths = [0]

    def sample() -> None:
        while not stop.wait(0.25):
            depths.append(stack.queue_depth())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    late = 0.0
    try:
        with ThreadPoolExecutor(max_workers=int(min(256, max(32, rate * 4)))) as pool:
            t0 = time.time() + 0.2
            for i, track in enumerate(tracks):
                track.target = t0 + i / rate
                delay = track.target - time.time()
                if delay > 0:
                    time.sleep(delay)
                late = max(late, time.time() - track.target)
                pool.submit(job, track)
    finally:
        stop.set()
        sampler.join(timeout=5)
    return max(depths), late


def mails_sent(purchases: list[Purchase]) -> int:
    return common.scalar(
        "/* bench */ SELECT count(*) FROM notifications "
        "WHERE correlation_id = ANY(CAST(:ids AS uuid[])) AND status = 'sent'",
        ids=[p.key for p in purchases],
    )


def drain(stack: stacks.Stack, purchases: list[Purchase], timeout: float) -> float | None:
    """Wait until every payment's sessions showed, both its e-mails were sent and no
    message waits in any queue; seconds after the last confirm was sent, None if
    `timeout` seconds after it that was still not so."""
    last = max((p.sent or p.pay_sent or 0.0) for p in purchases)

    def done() -> bool:
        return (
            all(p.visible is not None for p in purchases)
            and mails_sent(purchases) >= MAILS_PER_PAYMENT * len(purchases)
            and stack.queue_depth(stacks.ALL_QUEUES) == 0
        )

    if common.wait_for(done, max(0.0, last + timeout - time.time()), 0.1):
        return time.time() - last
    return None


@dataclass
class Step:
    label: str
    rate: float
    tracks: list
    depth: int
    late: float
    drained: float | None
    cpu: stacks.CpuWindow
    reference: bool = False
    statements: list[list[str]] = field(default_factory=list)

    @property
    def fulfilled(self) -> int:
        return sum(1 for t in self.tracks if t.visible is not None)

    @property
    def failed(self) -> int:
        return sum(1 for t in self.tracks if t.status >= 500) + sum(t.errors for t in self.tracks)

    def healthy(self, provider_ms: float) -> bool:
        answered = latencies(self.tracks, "answered")
        visible = latencies(self.tracks, "visible")
        return (
            self.drained is not None
            and self.failed == 0
            and len(visible) == len(self.tracks)
            and common.percentile(answered, 99) <= CONFIRM_P99
            and common.percentile(visible, 95) <= VISIBLE_P95 + provider_ms / 1000
        )

    def stack_cpu(self) -> float:
        """CPU seconds of the stack's processes (the totals' parts)."""
        return sum(self.cpu.seconds[kind] for kind in stack_kinds())

    def row(self) -> list[object]:
        confirm = common.summary(latencies(self.tracks, "answered"))
        visible = common.summary(latencies(self.tracks, "visible"))
        paid_to_visible = [
            t.visible - t.pay_sent
            for t in self.tracks
            if getattr(t, "pay_sent", None) is not None and t.visible is not None
        ]
        per = 1000 * self.stack_cpu() / max(self.fulfilled, 1)
        return [
            self.label,
            f"{self.fulfilled}/{len(self.tracks)}",
            self.failed,
            common.ms(confirm["p50"]),
            common.ms(confirm["p99"]),
            common.ms(visible["p50"]),
            common.ms(visible["p95"]),
            common.ms(visible["p99"]),
            common.ms(common.percentile(paid_to_visible, 50)) if paid_to_visible else "-",
            self.depth,
            f"{self.drained:.1f}" if self.drained is not None else "NO",
            f"{per:.1f}",
            f"{100 * self.stack_cpu() / max(self.cpu.elapsed, 1e-9):.0f}",
            f"{self.cpu.others:.0f}",
        ]


def stack_kinds() -> list[str]:
    return [*stacks.KINDS.values(), stacks.POSTGRES, stacks.REDIS]


# --- pg_stat_statements ------------------------------------------------------------------


def statements_on() -> bool:
    """pg_stat_statements in the bench database, with planning times, if PostgreSQL
    loads it (shared_preload_libraries); False otherwise."""
    database = make_url(common.settings.database_url).database
    try:
        common.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        common.execute(f'ALTER DATABASE "{database}" SET pg_stat_statements.track_planning = on')
        common.scalar("SELECT count(*) FROM pg_stat_statements")
    except Exception as exc:  # not preloaded: the bench runs without it
        print(f"pg_stat_statements unavailable ({str(exc).splitlines()[0]})")
        return False
    return True


def statements_reset() -> None:
    common.scalar(
        "SELECT pg_stat_statements_reset(0, "
        "(SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
    )


def statements_top(payments: int, top: int = 40) -> tuple[str, list[list[str]]]:
    """The bench database's statements since the reset, heaviest first (execution plus
    planning), per payment; the bench's own (marked /* bench */) left out."""
    with common._engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT calls, total_exec_time, total_plan_time, rows, query "
                "FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND query NOT LIKE '%/* bench%' AND query NOT LIKE '%pg_stat%' "
                "ORDER BY total_exec_time + total_plan_time DESC"
            )
        ).all()
    n = max(payments, 1)
    calls = sum(r.calls for r in rows)
    execute = sum(r.total_exec_time for r in rows)
    plan = sum(r.total_plan_time for r in rows)
    commits = sum(r.calls for r in rows if r.query.upper().startswith("COMMIT"))
    utility = sum(
        r.calls
        for r in rows
        if r.query.upper().startswith(
            ("BEGIN", "COMMIT", "ROLLBACK", "SET ", "SAVEPOINT", "RELEASE")
        )
    )
    note = (
        f"{calls / n:.1f} statements per payment ({len(rows)} kinds; {utility / n:.1f} of them "
        f"BEGIN, COMMIT, SET, SAVEPOINT…, {commits / n:.1f} commits), "
        f"{execute / n:.2f} ms executing and {plan / n:.2f} ms planning per payment"
    )
    table_rows = [
        [
            f"{r.calls / n:.2f}",
            f"{r.total_exec_time / r.calls:.3f}",
            f"{r.total_plan_time / r.calls:.3f}",
            f"{(r.total_exec_time + r.total_plan_time) / n:.3f}",
            "`" + " ".join(r.query.split())[:110].replace("|", "\\\\|") + "`",
        ]
        for r in rows[:top]
    ]
    return note, table_rows


# --- the run ----------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    stack: stacks.Stack
    client: Client
    browser: Browser
    poller: SessionsPoller
    course_id: int
    statements: bool
    steps: list[Step] = field(default_factory=list)
    references: list[Step] = field(default_factory=list)
    statement_note: str = ""

    def payments(self, label: str, rate: float, seconds: float, measure: bool = True) -> Step:
        purchases = checkout(self.client, self.course_id, max(1, int(rate * seconds)))
        stacks.wait_until_quiet(self.stack)
        profiling = measure and self.args.profile is not None and rate == self.args.cpu_rate
        counting = measure and self.statements and rate == self.args.cpu_rate
        if counting:
            statements_reset()
        job = purchase_job(self.client, self.browser, self.poller)
        with self.stack.measure() as cpu:
            if profiling:
                with pyspy.recording(
                    {name: process.pid for name, process in self.stack.processes.items()},
                    self.args.profile,
                    seconds,
                    children={"worker", "mail", "deadletters", "api"},
                ):
                    depth, late = offer(self.stack, purchases, rate, job)
            else:
                depth, late = offer(self.stack, purchases, rate, job)
            drained = drain(self.stack, purchases, self.args.drain_timeout)
        step = Step(label, rate, purchases, depth, late, drained, cpu)
        if counting:
            self.statement_note, step.statements = statements_top(step.fulfilled)
        if profiling:
            self.write_profiles(step)
        return step

    def write_profiles(self, step: Step) -> None:
        directory: Path = self.args.profile
        for name in self.stack.processes:
            raw = directory / f"{name}.raw"
            if not raw.exists():
                continue
            title = (
                f"{stacks.KINDS[name]} (`{name}` in the Procfile), {step.rate:g} payments/s "
                f"for {self.args.seconds:g} s, provider {self.args.provider_ms:g} ms"
            )
            pid = self.stack.processes[name].pid
            cpu_ms = step.cpu.per(step.fulfilled)[stacks.KINDS[name]]
            summary = pyspy.summarize(raw, cpu_ms, root_pid=pid, title=title)
            (directory / f"{name}.txt").write_text(summary + "\n")
            # The whole profile stays outside the repository, for questions the summary
            # does not answer (bench.pyspy reads it again); the committed one is trimmed.
            shutil.copy(raw, Path(tempfile.gettempdir()) / f"tutorflow-pyspy-{name}.raw")
            pyspy.trim(raw, root_pid=pid)
        if step.statements:
            lines = [
                f"# PostgreSQL (pg_stat_statements), {step.rate:g} payments/s for "
                f"{self.args.seconds:g} s, provider {self.args.provider_ms:g} ms",
                "",
                self.statement_note,
                "",
                statements_table(step.statements),
            ]
            (directory / "postgresql.txt").write_text("\n".join(lines) + "\n")

    def reference(self, rate: float, seconds: float) -> Step:
        tracks = [Track(uuid.uuid4().hex) for _ in range(max(1, int(rate * seconds)))]
        by_key = {t.key: t for t in tracks}

        def on_event(at: float, _channel: str, data: dict) -> None:
            track = by_key.get(data.get("token") or "")
            if track is not None and track.done_event is None:
                track.done_event = at
                track.wake.set()

        stacks.wait_until_quiet(self.stack)
        with (
            common.LiveEvents(
                patterns=(), channels=(DONE_CHANNEL,), on_event=on_event, url=self.stack.redis_url
            ),
            self.stack.measure() as cpu,
        ):
            depth, late = offer(self.stack, tracks, rate, reference_job(self.client, 20.0))
            last = max(t.sent for t in tracks)
            finished = common.wait_for(
                lambda: all(t.done_event is not None for t in tracks),
                max(0.0, last + self.args.drain_timeout - time.time()),
                0.05,
            )
            drained = time.time() - last if finished else None
        for track in tracks:
            track.visible = track.done_event
        return Step(f"{rate:g}", rate, tracks, depth, late, drained, cpu, reference=True)


def statements_table(rows: list[list[str]]) -> str:
    return common.table(
        ["calls / payment", "exec ms / call", "plan ms / call", "ms / payment", "statement"], rows
    )


STEP_HEADERS = [
    "offered /s",
    "fulfilled",
    "5xx/errors",
    "confirm p50",
    "confirm p99",
    "→ sessions p50",
    "p95",
    "p99",
    "pay → sessions p50",
    "max queue",
    "drained, s after last confirm",
    "stack CPU ms / payment",
    "stack CPU % of a core",
    "other work on the machine, % of a core",
]


def cpu_table(idle: stacks.CpuWindow, steps: list[Step], reference: Step | None) -> str:
    headers = ["process kind", "idle, ms/s"]
    headers += [f"{s.label}/s, ms/payment" for s in steps]
    if reference is not None:
        headers.append(f"bare chain at {reference.label}/s, ms/chain")
    columns = [{k: 1000 * v / max(idle.elapsed, 1e-9) for k, v in idle.seconds.items()}]
    columns += [s.cpu.per(s.fulfilled) for s in steps]
    if reference is not None:
        columns.append(reference.cpu.per(reference.fulfilled))
    rows: list[list[object]] = []
    for kind in stack_kinds():
        rows.append([kind, *(f"{c[kind]:.1f}" for c in columns)])
    rows.append(
        ["**total (the stack)**", *(f"**{sum(c[k] for k in stack_kinds()):.1f}**" for c in columns)]
    )
    # What a deployment runs: the provider and the mail relay are someone else's servers.
    product = [k for k in stack_kinds() if k not in stacks.DEV_STAND_INS]
    rows.append(
        [
            "total without the dev stand-ins (sandbox, SMTP sink)",
            *(f"{sum(c[k] for k in product):.1f}" for c in columns),
        ]
    )
    for kind in (stacks.POSTGRES_BACKGROUND, stacks.LOAD_GENERATOR):
        rows.append([f"({kind})", *(f"{c[kind]:.1f}" for c in columns)])
    return common.table(headers, rows)


def realistic(args: argparse.Namespace) -> None:
    rates = [float(r) for r in (args.rates or REALISTIC_RATES).split(",")]
    poll = (args.poll_ms if args.poll_ms is not None else REALISTIC_POLL_MS) / 1000
    if args.profile is not None and pyspy.executable() is None:
        raise SystemExit("--profile needs py-spy: pip install -e '.[dev]'")
    common.fresh_database()
    statements = statements_on()
    warmup = 20
    total = warmup + int(sum(rates) * args.seconds * 1.2) + int(1.5 * max(rates) * args.seconds)
    course_id = seed_realistic(total)
    print(common.machine_note())
    print(
        f"realistic flow: the Procfile's stack (LOG_LEVEL={args.log_level}"
        + "".join(f", {item}" for item in args.env)
        + f"); each provider call waits {args.provider_ms:g} ms at the sandbox"
    )
    extra = dict(item.split("=", 1) for item in args.env)
    with stacks.running_stack(log_level=args.log_level, extra_env=extra) as stack:
        stack.provider_latency(args.provider_ms)
        client = Client(stack.api_port)
        browser = Browser(stack.sandbox_url)
        with SessionsPoller(poll) as poller:
            run = Run(args, stack, client, browser, poller, course_id, statements)
            run.payments("warm-up", 5, warmup / 5, measure=False)  # pools, imports; not shown
            stacks.wait_until_quiet(stack)
            with stack.measure() as idle:
                time.sleep(args.idle_seconds)
            knee = None
            for rate in rates:
                step = run.payments(f"{rate:g}", rate, args.seconds)
                run.steps.append(step)
                print(f"step {rate:g}/s done", file=sys.stderr, flush=True)
                if step.healthy(args.provider_ms):
                    knee = rate
                elif not args.all_rates:
                    break
            if knee is not None:
                rate = 1.5 * knee
                over = run.payments(f"{rate:g} (1.5 x knee)", rate, args.seconds, measure=False)
                run.steps.append(over)
                print("overload step done", file=sys.stderr, flush=True)
            offered = [s.rate for s in run.steps if "knee" not in s.label]
            wanted = {"all": offered, "cpu": [args.cpu_rate], "none": []}[args.reference]
            for rate in wanted:
                if rate in offered:
                    run.references.append(run.reference(rate, args.reference_seconds))
            letters = common.scalar("SELECT count(*) FROM dead_letters")
            delivered = stack.sandbox_state()["webhooks_delivered"]
            errors = {name: stack.log(name).count(" ERROR ") for name in stack.processes}
            polls = poller.polls

    print(
        f"\nopen loop, {args.seconds:g} s per step; milliseconds; confirm = POST "
        "/payments/{id}/confirm answered; → sessions = from sending the confirm until the "
        f"poller (every {poll * 1000:g} ms) saw the sessions committed; pay → sessions = "
        "from the student's payment at the sandbox; drained = sessions, both e-mails sent "
        "and every queue empty\n"
    )
    print("Payments (the realistic flow):\n")
    print(common.table(STEP_HEADERS, [s.row() for s in run.steps]))
    if run.references:
        print("\nReference: the bare 5-task no-op chain, POST /bench/ref/chain → done event:\n")
        headers = [h if h != "confirm p50" else "POST p50" for h in STEP_HEADERS]
        headers = [h if h != "confirm p99" else "POST p99" for h in headers]
        print(common.table(headers, [s.row() for s in run.references]))
    measured = [s for s in run.steps if "knee" not in s.label]
    reference = next((r for r in run.references if r.rate == args.cpu_rate), None)
    print(
        "\nCPU per payment per process kind (ms of CPU, /proc utime + stime of each process "
        "tree from a step's first offer until it drained, divided by the payments "
        "fulfilled; idle: the stack doing nothing, ms per second):\n"
    )
    print(cpu_table(idle, measured, reference))
    step = next((s for s in measured if s.rate == args.cpu_rate), measured[0])
    print(
        f"\nlog lines per payment at {step.label}/s (LOG_LEVEL={args.log_level}): "
        + ", ".join(
            f"{name} {lines / max(step.fulfilled, 1):.1f}"
            for name, lines in step.cpu.log_lines.items()
            if lines
        )
    )
    ended = sum(s.cpu.ended_backends for s in measured)
    if ended:
        print(f"({ended} PostgreSQL backends ended inside a window: their CPU is not counted)")
    if run.statement_note:
        print(
            f"\nPostgreSQL statements at {args.cpu_rate:g}/s (pg_stat_statements): "
            f"{run.statement_note}\n"
        )
        step = next(s for s in measured if s.statements)
        print(statements_table(step.statements[:15]))
    bound = 150 + args.provider_ms
    late = max((s.late for s in run.steps), default=0.0)
    print(
        f"\nknee (confirm p99 ≤ 50 ms, confirm → sessions p95 ≤ {bound:g} ms, all fulfilled, "
        f"no 5xx, drained): {knee if knee is not None else 'below the lowest step'} "
        "payments/s" + ("" if args.all_rates else " (steps stop at the first rate past it)")
    )
    not_2xx = sum(1 for _, status in delivered if not 200 <= status < 300)
    print(
        f"webhooks: {len(delivered)} delivered by the sandbox, {not_2xx} answered other than "
        f"2xx; {letters} dead letters; ERROR lines per log: "
        + (", ".join(f"{name} {count}" for name, count in errors.items() if count) or "none")
        + f"; {polls} polls; the latest send {late * 1000:.0f} ms behind schedule"
    )


# --- the command ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flow", choices=["realistic", "lab"], default="realistic")
    parser.add_argument(
        "--rates",
        help=f"payments/s per step (realistic: {REALISTIC_RATES}; lab: {LAB_RATES})",
    )
    parser.add_argument("--seconds", type=float, help="per step (realistic: 20; lab: 30)")
    parser.add_argument(
        "--poll-ms",
        type=float,
        help=f"realistic: the poller's period ({REALISTIC_POLL_MS:g}); lab: the clients' "
        f"home reads' ({LAB_POLL_MS:g})",
    )
    common.add_provider_argument(parser)
    realistic_options = parser.add_argument_group("realistic flow")
    realistic_options.add_argument(
        "--cpu-rate",
        type=float,
        default=10.0,
        help="the step whose statements are counted, profiled and set beside the bare chain",
    )
    realistic_options.add_argument(
        "--all-rates", action="store_true", help="run every step, not only up to the knee"
    )
    realistic_options.add_argument(
        "--reference",
        choices=["all", "cpu", "none"],
        default="all",
        help="the bare chain at every rate run, at --cpu-rate only, or not at all",
    )
    realistic_options.add_argument("--reference-seconds", type=float, default=10.0)
    realistic_options.add_argument(
        "--drain-timeout", type=float, default=60.0, help="after a step's last confirm, s"
    )
    realistic_options.add_argument("--idle-seconds", type=float, default=5.0)
    realistic_options.add_argument(
        "--log-level", default="INFO", help="the stack's LOG_LEVEL (make up's: INFO)"
    )
    realistic_options.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every process of the stack (CELERY_STEP_EVENTS=outcomes, say)",
    )
    realistic_options.add_argument(
        "--profile",
        type=Path,
        help="py-spy every process kind during the --cpu-rate step, into this directory",
    )
    lab_options = parser.add_argument_group("lab flow")
    lab_options.add_argument(
        "--reads-per-payment", type=float, default=0.5, help="extra home reads (0..1)"
    )
    lab_options.add_argument("--timeout", type=float, default=20.0, help="per payment, seconds")
    lab_options.add_argument(
        "--concurrency", type=int, default=2, help="worker pool processes (production: 2)"
    )
    args = parser.parse_args()
    if args.flow == "lab":
        args.seconds = args.seconds or 30.0
        lab(args)
    else:
        args.seconds = args.seconds or 20.0
        realistic(args)


if __name__ == "__main__":
    main()
