"""Pipeline throughput: N confirmed payments through a real worker, against a bare chain.

N payments (default 2000) are confirmed and handed off in committed transactions
(domain.payments.confirm_payment + tasks.handoff.publish_after_commit, via
confirm_and_hand_off), so N fulfilment chains wait in the queue; then a real worker
starts (the production flags, -c 2) and the clock runs from its worker_ready signal until
every payment has its 7 sessions (a count in PostgreSQL) and until every chain's last
step announced STUDENT_VIEWS_REFRESHED (Redis pub/sub).

Reference in the same run, on the same broker and worker flags: N bare 5-task no-op
chains (bench/noop_tasks.py) queued the same way and drained by a fresh worker.

    python -m bench.pipeline [--payments 2000] [--timeout 900] [--concurrency 2] [--tracing off|on]
                              [--provider-ms 0]

With `--tracing on` this process (the confirms) and the workers trace (OpenTelemetry,
OTLP/HTTP to a local sink that discards the spans), the reference chains too.
"""

from __future__ import annotations

import argparse
import re
import time
import uuid
from dataclasses import dataclass

import bench.common as common
from actions import payments as actions
from bench.common import settings
from bench.noop_tasks import DONE_CHANNEL, noop_chain
from bootstrap import bootstrap
from harness.brokers import queue_length

celery_app = bootstrap().celery  # the bench settings (bench.common)

TASKS_PER_CHAIN = 5
POLL_SECONDS = 0.1  # the DB count's period: the resolution of "all have 7 sessions"
# Where a chain's CPU goes. Rates move with what the rest of a shared host takes; CPU
# time per chain barely does, so it tells whether a change made a chain cheaper.
CPU_PARTS = ("workers", "PostgreSQL", "Redis")


@dataclass
class Drain:
    label: str
    chains: int
    seconds: float | None  # worker ready → all done; None if the timeout came first
    done: int  # chains seen done when it stopped
    redis_calls: int  # Redis commands run during the drain (server-wide)
    cpu: common.CpuUse  # from the worker's readiness to the end of the drain

    def cpu_ms(self, *parts: str) -> float:
        """CPU milliseconds per chain spent in these parts of the system."""
        return 1000 * sum(self.cpu.seconds[part] for part in parts) / self.chains

    @property
    def rate(self) -> float:
        return self.chains / self.seconds if self.seconds else float("nan")


def confirm_all(payments: list[uuid.UUID]) -> float:
    """Confirm each payment (the application action the API calls: its own transaction,
    the chain published after the commit); seconds taken."""
    started = time.perf_counter()
    for payment_id in payments:
        with common.root_span("bench confirm"):  # as the API's request span, when tracing
            actions.confirm(
                celery_app.database,
                payment_id,
                student_id=None,
                source="bench",
                hold_minutes=celery_app.settings.hold_minutes,
            )
    return time.perf_counter() - started


def worker_health(log: str) -> str:
    retries = len(re.findall(r"will retry", log))
    errors = len(re.findall(r"\bERROR\b", log))
    return f"{retries} retries, {errors} ERROR lines in the worker log"


def run_pipeline(
    payments: list[uuid.UUID], timeout: float, concurrency: int
) -> tuple[Drain, Drain, str]:
    wanted = {str(p) for p in payments}
    refreshed: dict[str, float] = {}

    def on_event(at: float, _channel: str, data: dict) -> None:
        if data.get("type") == "STUDENT_VIEWS_REFRESHED" and data.get("payment_id") in wanted:
            refreshed.setdefault(data["payment_id"], at)

    n = len(payments)
    window = settings.session_window
    sessions_done_at = None
    calls = common.redis_calls()
    with (
        common.LiveEvents(patterns=("student:*:events",), on_event=on_event),
        common.celery_worker(concurrency=concurrency) as worker,
        common.CpuSplit(worker.pids).measure() as cpu,
    ):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The cheap total first (an allocation never gets more than the window);
            # the per-allocation count only confirms it.
            if (
                sessions_done_at is None
                and common.scalar("SELECT count(*) FROM tutoring_sessions") >= n * window
                and common.count_scheduled() >= n
            ):
                sessions_done_at = time.time()
            if sessions_done_at is not None and len(refreshed) >= n:
                break
            time.sleep(POLL_SECONDS)
        scheduled = common.count_scheduled()
        health = worker_health(worker.log())
        ready = worker.ready_at()
        calls = common.redis_calls() - calls
    to_sessions = Drain(
        f"real chain: all {settings.session_window} sessions in the DB",
        n,
        sessions_done_at - ready if sessions_done_at else None,
        scheduled,
        calls,
        cpu,
    )
    to_end = Drain(
        "real chain: last step done (STUDENT_VIEWS_REFRESHED)",
        n,
        max(refreshed.values()) - ready if len(refreshed) >= n else None,
        len(refreshed),
        calls,
        cpu,
    )
    return to_sessions, to_end, health


def step_times() -> list[list[str]]:
    """Each task's runs and time in the drain just done, from the duration histograms
    the workers keep for /metrics (core.telemetry), longest total first."""
    durations = bootstrap(settings).telemetry.durations()
    total = sum(d.total_seconds for d in durations.values()) or 1.0
    rows = []
    for task, d in sorted(durations.items(), key=lambda item: -item[1].total_seconds):
        runs = d.buckets[-1][1]
        rows.append(
            [
                task.rsplit(".", 1)[-1],
                f"{runs:,}",
                f"{1000 * d.total_seconds / max(runs, 1):.2f}",
                f"{d.total_seconds:.1f}",
                f"{100 * d.total_seconds / total:.0f}%",
            ]
        )
    return rows


def run_noop(n: int, timeout: float, concurrency: int) -> tuple[Drain, str]:
    tokens = [uuid.uuid4().hex for _ in range(n)]
    wanted = set(tokens)
    done: dict[str, float] = {}

    def on_event(at: float, _channel: str, data: dict) -> None:
        if data.get("token") in wanted:
            done.setdefault(data["token"], at)

    for token in tokens:
        noop_chain(celery_app, token).apply_async()
    calls = common.redis_calls()
    with (
        common.LiveEvents(patterns=(), channels=(DONE_CHANNEL,), on_event=on_event),
        common.celery_worker(concurrency=concurrency) as worker,
        common.CpuSplit(worker.pids).measure() as cpu,
    ):
        common.wait_for(lambda: len(done) >= n, timeout, interval=POLL_SECONDS)
        health = worker_health(worker.log())
        ready = worker.ready_at()
        calls = common.redis_calls() - calls
    seconds = max(done.values()) - ready if len(done) >= n else None
    return (
        Drain("reference: bare 5-task no-op chain", n, seconds, len(done), calls, cpu),
        health,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=900.0, help="per drain, seconds")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="worker pool processes (production: 2)"
    )
    common.add_tracing_argument(parser)
    common.add_provider_argument(parser)
    args = parser.parse_args()
    n = args.payments

    common.fresh_database()
    common.flush_bench_redis()
    trainers = common.trainers_for(n)
    course_id = common.seed_catalogue(trainers=trainers, max_students=100)
    payments = [p for p, _ in common.seed_pending_payments(course_id, n)]
    paid_in = common.pay_at_the_provider(payments)
    print(
        f"seeded {trainers} trainers x {common.SLOTS} slots and {n:,} pending payments, "
        f"paid at the sandbox in {paid_in:.1f} s"
    )
    common.slow_provider(args.provider_ms)
    verify_ms = common.provider_round_trip_ms(samples=20 if args.provider_ms else 200)
    print(
        f"the verify step's provider call (retrieve PaymentIntent, sandbox on loopback): "
        f"{verify_ms:.2f} ms median"
    )
    print(common.machine_note())

    with common.tracing(args.tracing, here=True) as sink:
        confirm_seconds = confirm_all(payments)
        queued = queue_length(settings.broker_url, *common.CHAIN_QUEUES)
        print(
            f"confirmed and handed off {n:,} payments in {confirm_seconds:.1f} s "
            f"({n / confirm_seconds:,.0f}/s, one process); {queued:,} messages queued"
        )
        try:
            to_sessions, to_end, real_health = run_pipeline(
                payments, args.timeout, args.concurrency
            )
            letters = common.scalar("SELECT count(*) FROM dead_letters")
            steps = step_times()
            common.flush_bench_redis()
            noop, noop_health = run_noop(n, args.timeout, args.concurrency)
        finally:
            common.flush_bench_redis()
    print(common.tracing_note(args.tracing, sink))

    print()
    print(
        f"{n:,} chains queued before the worker starts; worker: -c {args.concurrency} prefork, "
        "clock from its worker_ready signal"
    )
    print()
    rows = []
    for drain in (to_sessions, to_end, noop):
        tasks = TASKS_PER_CHAIN * drain.chains
        per_task = args.concurrency * drain.seconds / tasks if drain.seconds else None
        rows.append(
            [
                drain.label,
                f"{drain.done:,}/{drain.chains:,}",
                f"{drain.seconds:.1f}" if drain.seconds else "timeout",
                f"{drain.rate:,.1f}",
                f"{drain.rate * TASKS_PER_CHAIN:,.0f}",
                common.ms(per_task) if per_task else "-",
                f"{drain.redis_calls / drain.chains:.0f}",
            ]
        )
    print(
        common.table(
            [
                "run",
                "done",
                "seconds",
                "chains/s",
                "tasks/s",
                "ms per task per process",
                "Redis cmds/chain",
            ],
            rows,
        )
    )
    print()
    rows = [
        [
            drain.label,
            f"{drain.rate / noop.rate:.2f}x",
            "≥ 0.60x",
            "met" if drain.rate / noop.rate >= 0.6 else "NOT met",
        ]
        for drain in (to_sessions, to_end)
    ]
    print(common.table(["ratio to the bare chain", "chains/s ratio", "target", ""], rows))
    print()
    cpu_rows = [
        [
            drain.label,
            *(f"{drain.cpu_ms(part):.1f}" for part in CPU_PARTS),
            f"{drain.cpu_ms(*CPU_PARTS):.1f}",
        ]
        for drain in (to_sessions, noop)
    ]
    print(
        common.table(
            ["CPU per chain, ms (drain)", *CPU_PARTS, "sum"],
            cpu_rows,
        )
    )
    print(f"\nreal run: {real_health}, {letters} dead letters; bare run: {noop_health}")
    print("\nWhere the real run's time went (the workers' own step durations, /metrics):\n")
    print(common.table(["task", "runs", "mean ms", "total s", "share"], steps))
    common.print_summary(
        "pipeline",
        args.tracing,
        {
            "pipeline chains/s, all sessions in the DB": to_sessions.rate,
            "pipeline chains/s, last step done": to_end.rate,
            "bare no-op chains/s": noop.rate,
            "pipeline CPU ms per chain (workers, PostgreSQL, Redis)": to_sessions.cpu_ms(
                *CPU_PARTS
            ),
        },
    )


if __name__ == "__main__":
    main()
